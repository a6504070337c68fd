// A second subgraph: the survey tool, which extends c360's Customer with a score of its own.
// Usage: node survey.mjs  (prints {"port": N} once listening)
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';
import { buildSubgraphSchema } from '@apollo/subgraph';
import { createHash } from 'node:crypto';
import { parse } from 'graphql';

const typeDefs = parse(`
  extend schema @link(url: "https://specs.apollo.dev/federation/v2.3", import: ["@key"])
  type Customer @key(fields: "id") {
    id: ID!
    "Net promoter score from the survey tool (0-10), derived from the id for the test."
    nps: Int
  }
`);

// What the tests expect for a customer: the same function in Python (tests/test_federation.py).
export const npsOf = (id) => createHash('sha256').update(id).digest()[0] % 11;

let calls = 0;
const resolvers = {
  Customer: {
    __resolveReference(reference) {
      calls += 1;
      return { id: reference.id, nps: npsOf(reference.id) };
    },
  },
};

const server = new ApolloServer({ schema: buildSubgraphSchema([{ typeDefs, resolvers }]) });
const { url } = await startStandaloneServer(server, { listen: { port: 0, host: '127.0.0.1' } });
process.stdout.write(JSON.stringify({ port: Number(new URL(url).port) }) + '\n');
