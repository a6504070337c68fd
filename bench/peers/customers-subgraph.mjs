// The sales CRM as a thin federation subgraph for the Node peers: customers by CUID, read
// from the same SQLite file c360 reads, after the same simulated latency per query. It also
// holds c360's identity crosswalk (a JSON file the harness writes), because federation needs
// one subgraph that knows which helpdesk requester and marketing contact a customer is.
//
// Its schema and which column holds each field come from SCHEMA, a JSON file the harness
// derives from c360's graph declaration (bench/peer_schemas.py): the same fields, read
// from the same columns.
//
// env: PORT, SALES_DB (path of sales.db), CROSSWALK (path of crosswalk.json), LATENCY_MS,
//      SCHEMA (path of the subgraph's spec: { typeDefs, columns: { field: { column, number } } })
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { parse } from 'graphql';
import { buildSubgraphSchema } from '@apollo/subgraph';
import { createYoga } from 'graphql-yoga';
import initSqlJs from 'sql.js';

const port = Number(process.env.PORT);
const latencyMs = Number(process.env.LATENCY_MS ?? '5');
// sql.js keeps the database in memory: the file is read once; the data does not change
// during a benchmark.
const SQL = await initSqlJs();
const db = new SQL.Database(readFileSync(process.env.SALES_DB));
// { "ordered": [cuid, ...], "links": { cuid: { sales, service, marketing } } }
const crosswalk = JSON.parse(readFileSync(process.env.CROSSWALK, 'utf8'));
const { typeDefs: sdl, columns } = JSON.parse(readFileSync(process.env.SCHEMA, 'utf8'));
const typeDefs = parse(sdl);
const selected = ['id', ...new Set(Object.values(columns).map((c) => c.column))].join(', ');
// total: SQL queries (the calls to the sales system); operations: GraphQL requests served.
const stats = { total: 0, operations: 0 };

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// c360 trims text and turns an empty string into null; the peers answer the same values.
const text = (value) => {
  if (value === null || value === undefined) return null;
  const trimmed = String(value).trim();
  return trimmed === '' ? null : trimmed;
};

async function salesRecords(cuids) {
  const ids = cuids.map((cuid) => crosswalk.links[cuid]?.sales).filter((id) => id != null);
  const byId = new Map();
  if (ids.length > 0) {
    stats.total += 1;
    if (latencyMs > 0) await sleep(latencyMs);
    const marks = ids.map(() => '?').join(',');
    const statement = db.prepare(
      `SELECT ${selected} FROM crm_customers WHERE id IN (${marks})`,
    );
    statement.bind(ids.map(Number));
    while (statement.step()) {
      const row = statement.getAsObject();
      byId.set(String(row.id), row);
    }
    statement.free();
  }
  return cuids.map((cuid) => ({ cuid, row: byId.get(String(crosswalk.links[cuid]?.sales)) }));
}

const cursorOf = (cuid) => Buffer.from(`c360:${cuid}`).toString('base64url');
const cuidOf = (cursor) => Buffer.from(cursor, 'base64url').toString().replace(/^c360:/, '');

const resolvers = {
  Query: {
    async customer(_, { id }) {
      if (!crosswalk.links[id]) return null;
      const [customer] = await salesRecords([id]);
      return customer;
    },
    async customers(_, { first, after }) {
      const ordered = crosswalk.ordered;
      let start = 0;
      if (after) {
        const cuid = cuidOf(after);
        while (start < ordered.length && ordered[start] <= cuid) start += 1;
      }
      const page = ordered.slice(start, start + Math.min(first ?? 20, 100));
      const customers = await salesRecords(page);
      const edges = customers.map((node) => ({ cursor: cursorOf(node.cuid), node }));
      return {
        edges,
        pageInfo: {
          hasNextPage: start + page.length < ordered.length,
          endCursor: edges.length ? edges[edges.length - 1].cursor : null,
        },
      };
    },
  },
  Customer: {
    id: (c) => c.cuid,
    ...Object.fromEntries(
      Object.entries(columns).map(([field, { column, number }]) => [
        field,
        number
          ? (c) => (c.row?.[column] == null ? null : Number(c.row[column]))
          : (c) => text(c.row?.[column]),
      ]),
    ),
    requester: (c) => {
      const id = crosswalk.links[c.cuid]?.service;
      return id ? { id } : null;
    },
    contact: (c) => {
      const id = crosswalk.links[c.cuid]?.marketing;
      return id ? { id } : null;
    },
  },
};

const yoga = createYoga({
  schema: buildSubgraphSchema([{ typeDefs, resolvers }]),
  graphiql: false,
  landingPage: false,
  logging: 'warn',
});

createServer((request, response) => {
  if (request.url === '/_admin/stats') {
    response.setHeader('content-type', 'application/json');
    response.end(JSON.stringify(stats));
  } else {
    if (request.method === 'POST') stats.operations += 1;
    yoga(request, response);
  }
}).listen(port, '127.0.0.1', () => {
  console.log(`customers subgraph on http://127.0.0.1:${port}/graphql`);
});
