// Runs the graphql-http server audit against a GraphQL endpoint and prints a JSON summary.
// Usage: C360_TOKEN=<jwt> node audit.mjs http://127.0.0.1:PORT/graphql
import { auditServer } from 'graphql-http';

const url = process.argv[2];
const token = process.env.C360_TOKEN;
// Every audit request carries the bearer token the gateway requires.
const fetchFn = (input, init = {}) => {
  const headers = new Headers(init.headers);
  if (token) headers.set('authorization', `Bearer ${token}`);
  return fetch(input, { ...init, headers });
};
const results = await auditServer({ url, fetchFn });
const summary = { ok: 0, warn: 0, error: 0, problems: [] };
for (const result of results) {
  summary[result.status] += 1;
  if (result.status !== 'ok') {
    summary.problems.push({ status: result.status, name: result.name, reason: result.reason });
  }
}
console.log(JSON.stringify(summary));
