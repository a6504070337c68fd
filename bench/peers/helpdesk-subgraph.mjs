// The helpdesk as a thin federation subgraph for the Node peers: `Requester` entities whose
// tickets come from the demo helpdesk's batch endpoint, one HTTP call per `_entities` request
// (a per-request DataLoader gathers the representations), shaped as c360 shapes them.
//
// env: PORT, HELPDESK_URL (the demo helpdesk's base URL)
import { createServer } from 'node:http';
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

const shape = (t) => ({
  id: t.id,
  subject: t.subject,
  status: String(t.status).trim().toUpperCase(),
  satisfaction: t.csat,
  openedAt: t.created_at,
  closedAt: t.closed_at,
});

const typeDefs = parse(/* GraphQL */ `
  extend schema @link(url: "https://specs.apollo.dev/federation/v2.3", import: ["@key"])

  type Requester @key(fields: "id") {
    id: ID!
    tickets(first: Int = 10): [Ticket!]
    satisfaction: Float
  }

  type Ticket {
    id: ID!
    subject: String!
    status: TicketStatus!
    satisfaction: Int
    openedAt: String!
    closedAt: String
  }

  enum TicketStatus {
    OPEN
    PENDING
    CLOSED
  }
`);

const resolvers = {
  Requester: {
    async __resolveReference({ id }, context) {
      return { id, tickets: await context.tickets.load(id) };
    },
    tickets: (r, { first }) =>
      r.tickets
        .map(shape)
        .sort((a, b) => (a.openedAt < b.openedAt ? 1 : a.openedAt > b.openedAt ? -1 : 0))
        .slice(0, first ?? 10),
    satisfaction: (r) => {
      const scores = r.tickets
        .map(shape)
        .filter((t) => t.status === 'CLOSED' && t.satisfaction != null)
        .map((t) => t.satisfaction);
      if (scores.length === 0) return null;
      return Math.round((scores.reduce((a, b) => a + b, 0) / scores.length) * 100) / 100;
    },
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
