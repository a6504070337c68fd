// Runs the graphql-http server audit against a GraphQL endpoint and prints a JSON summary.
// Usage: node audit.mjs http://127.0.0.1:PORT/graphql
import { auditServer } from 'graphql-http';

const url = process.argv[2];
const results = await auditServer({ url });
const summary = { ok: 0, warn: 0, error: 0, problems: [] };
for (const result of results) {
  summary[result.status] += 1;
  if (result.status !== 'ok') {
    summary.problems.push({ status: result.status, name: result.name, reason: result.reason });
  }
}
console.log(JSON.stringify(summary));
