// The helpdesk as a thin federation subgraph for the Node peers: `Requester` entities whose
// tickets come from the demo helpdesk's batch endpoint, one HTTP call per `_entities` request
// (a per-request DataLoader gathers the representations), shaped as c360 shapes them.
//
// env: PORT, HELPDESK_URL (the demo helpdesk's base URL), SCHEMA (the subgraph's spec)
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { parse } from 'graphql';
import { buildSubgraphSchema } from '@apollo/subgraph';
import { createYoga } from 'graphql-yoga';
import DataLoader from 'dataloader';

const port = Number(process.env.PORT);
const helpdesk = process.env.HELPDESK_URL;

async function ticketsOf(requesterIds) {
  const url = `${helpdesk}/api/v2/tickets?requester_ids=${requesterIds.map(encodeURIComponent).join(',')}`;
  const response = await fetch(url);
  if (!response.ok) throw new Error(`helpdesk answered ${response.status}`);
  const { tickets } = await response.json();
  const grouped = new Map(requesterIds.map((id) => [id, []]));
  for (const ticket of tickets) grouped.get(ticket.requester_id)?.push(ticket);
  return requesterIds.map((id) => grouped.get(id));
}

// The schema, each Ticket field's attribute, the list's rule and the derived values come
// from SCHEMA, a JSON file the harness derives from c360's graph declaration
// (bench/peer_schemas.py), so the peer answers the fields c360 answers, shaped alike.
const spec = JSON.parse(readFileSync(process.env.SCHEMA, 'utf8'));
const typeDefs = parse(spec.typeDefs);
const { list, item, derived } = spec;

// An enum code is read as c360 reads it: the system's own code mapped, else its name in
// capitals without surrounding spaces.
const enumValue = (codes, value) =>
  value == null ? null : (codes[value] ?? String(value).trim().toUpperCase());
const shape = (t) =>
  Object.fromEntries(
    Object.entries(item).map(([field, { attribute, codes }]) => [
      field,
      codes ? enumValue(codes, t[attribute]) : t[attribute] ?? null,
    ]),
  );
const compare = (field, descending) => (a, b) => {
  const order = a[field] < b[field] ? -1 : a[field] > b[field] ? 1 : 0;
  return descending ? -order : order;
};

const aggregates = {
  count: (values) => values.length,
  sum: (values) => values.reduce((a, b) => a + b, 0),
  mean: (values) => (values.length ? values.reduce((a, b) => a + b, 0) / values.length : null),
  min: (values) => (values.length ? Math.min(...values) : null),
  max: (values) => (values.length ? Math.max(...values) : null),
};

function derive({ op, of, where, round }) {
  return (r) => {
    let rows = r[list.name].map(shape);
    if (where) rows = rows.filter((row) => String(row[where[0]]) === where[1]);
    const values = op === 'count' ? rows : rows.map((row) => row[of]).filter((v) => v != null);
    const value = aggregates[op](values);
    if (value == null || round == null) return value;
    const scale = 10 ** round;
    return Math.round(value * scale) / scale;
  };
}

const resolvers = {
  Requester: {
    async __resolveReference({ id }, context) {
      return { id, [list.name]: await context.tickets.load(id) };
    },
    [list.name]: (r, args) => {
      let rows = r[list.name].map(shape);
      for (const filter of list.filters) {
        if (args[filter] != null) rows = rows.filter((row) => row[filter] === args[filter]);
      }
      if (list.orderBy) rows.sort(compare(list.orderBy, list.descending));
      const limit = list.limit ? (args[list.limit] ?? list.limitDefault) : null;
      return limit == null ? rows : rows.slice(0, limit);
    },
    ...Object.fromEntries(derived.map((d) => [d.name, derive(d)])),
  },
};

const yoga = createYoga({
  schema: buildSubgraphSchema([{ typeDefs, resolvers }]),
  context: () => ({ tickets: new DataLoader(ticketsOf, { maxBatchSize: 200 }) }),
  graphiql: false,
  landingPage: false,
  logging: 'warn',
});

createServer(yoga).listen(port, '127.0.0.1', () => {
  console.log(`helpdesk subgraph on http://127.0.0.1:${port}/graphql`);
});
