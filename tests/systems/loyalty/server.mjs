// The loyalty department's system: members, their points, tier codes and redemptions,
// served as an Apollo Federation 2 subgraph (@apollo/subgraph + @apollo/server).
//
//   node server.mjs --port 0 --data members.json     (or env PORT, LOYALTY_DATA)
//
// Port 0 takes a free port. Once listening it prints a JSON line: {"port": N}.
// POST /graphql           the subgraph (`_entities` for Member by id, members, memberPage)
// GET  /healthz           200 {"status": "ok"}
// GET  /_admin/stats      requests counted per "METHOD /path" and per root field
// POST /_admin/reset      clears those counts
// POST /_admin/members    adds members (a JSON list shaped as in the data file)
//
// memberPage's cursor is opaque: base64url of "offset:N". A cursor it did not hand out
// is an error with HTTP 400, as the system's own API answers it.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { ApolloServer, HeaderMap } from '@apollo/server';
import {
  ApolloServerPluginInlineTraceDisabled,
  ApolloServerPluginLandingPageDisabled,
} from '@apollo/server/plugin/disabled';
import { buildSubgraphSchema } from '@apollo/subgraph';
import { GraphQLError, parse } from 'graphql';

const { values } = parseArgs({
  options: { port: { type: 'string' }, data: { type: 'string' } },
});
const port = Number(values.port ?? process.env.PORT ?? 0);
const dataPath = values.data ?? process.env.LOYALTY_DATA;
if (!dataPath) {
  console.error('loyalty: --data FILE (or LOYALTY_DATA) is required');
  process.exit(2);
}

const MAX_PAGE = 500;
const members = [];
const byId = new Map();
function addMembers(list) {
  for (const member of list) {
    if (byId.has(member.id)) continue;
    byId.set(member.id, member);
    members.push(member);
  }
  members.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}
addMembers(JSON.parse(readFileSync(dataPath, 'utf8')));

const counts = new Map();
const count = (key) => counts.set(key, (counts.get(key) ?? 0) + 1);

const encode = (offset) => Buffer.from(`offset:${offset}`).toString('base64url');
function decode(cursor) {
  const match = /^offset:(\d+)$/.exec(Buffer.from(cursor, 'base64url').toString());
  if (!match || encode(Number(match[1])) !== cursor) {
    throw new GraphQLError('invalid cursor', {
      extensions: { code: 'BAD_USER_INPUT', http: { status: 400 } },
    });
  }
  return Number(match[1]);
}

const typeDefs = parse(/* GraphQL */ `
  extend schema @link(url: "https://specs.apollo.dev/federation/v2.3", import: ["@key"])

  type Member @key(fields: "id") {
    id: ID!
    email: String
    phone: String
    points: Int!
    "G (gold), S (silver) or B (bronze)"
    tier: String!
    joinedAt: String!
    redemptions: [Redemption!]!
  }

  type Redemption {
    id: ID!
    reward: String!
    points: Int!
    redeemedAt: String!
  }

  type MemberPage {
    items: [Member!]!
    nextCursor: String
  }

  type Query {
    members(ids: [ID!]!): [Member!]!
    memberPage(first: Int!, after: String): MemberPage!
  }
`);

const resolvers = {
  Query: {
    members: (_, { ids }) => ids.map((id) => byId.get(id)).filter(Boolean),
    memberPage: (_, { first, after }) => {
      if (first < 1 || first > MAX_PAGE) {
        throw new GraphQLError(`first must be between 1 and ${MAX_PAGE}`, {
          extensions: { code: 'BAD_USER_INPUT', http: { status: 400 } },
        });
      }
      const offset = after ? decode(after) : 0;
      const items = members.slice(offset, offset + first);
      return { items, nextCursor: offset + first < members.length ? encode(offset + first) : null };
    },
  },
  Member: {
    __resolveReference: ({ id }) => byId.get(id) ?? null,
  },
};

const countFields = {
  async requestDidStart() {
    return {
      async didResolveOperation({ operation }) {
        for (const selection of operation.selectionSet.selections) {
          if (selection.kind === 'Field') count(`field ${selection.name.value}`);
        }
      },
    };
  },
};

const server = new ApolloServer({
  schema: buildSubgraphSchema([{ typeDefs, resolvers }]),
  plugins: [
    ApolloServerPluginLandingPageDisabled(),
    ApolloServerPluginInlineTraceDisabled(),
    countFields,
  ],
});
await server.start();

function send(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...headers });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function graphql(req, res, url) {
  const headers = new HeaderMap();
  for (const [name, value] of Object.entries(req.headers)) {
    if (value !== undefined) headers.set(name, Array.isArray(value) ? value.join(', ') : value);
  }
  const text = await readBody(req);
  let body;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      return send(res, 400, { errors: [{ message: 'body is not JSON' }] });
    }
  }
  const response = await server.executeHTTPGraphQLRequest({
    httpGraphQLRequest: { method: req.method, headers, search: url.search, body },
    context: async () => ({}),
  });
  const outHeaders = Object.fromEntries(response.headers);
  if (response.body.kind === 'complete') {
    return send(res, response.status ?? 200, response.body.string, outHeaders);
  }
  res.writeHead(response.status ?? 200, outHeaders);
  for await (const chunk of response.body.asyncIterator) res.write(chunk);
  res.end();
}

const http = createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  try {
    if (url.pathname === '/_admin/stats' && req.method === 'GET') {
      const requests = Object.fromEntries([...counts].sort());
      const total = [...counts].filter(([k]) => !k.startsWith('field ')).reduce((a, [, n]) => a + n, 0);
      return send(res, 200, { requests, total });
    }
    if (url.pathname === '/_admin/reset' && req.method === 'POST') {
      counts.clear();
      return send(res, 200, { ok: true });
    }
    if (url.pathname === '/_admin/members' && req.method === 'POST') {
      addMembers(JSON.parse(await readBody(req)));
      return send(res, 200, { members: members.length });
    }
    count(`${req.method} ${url.pathname}`);
    if (url.pathname === '/healthz' && req.method === 'GET') {
      return send(res, 200, { status: 'ok' });
    }
    if (url.pathname === '/graphql') return await graphql(req, res, url);
    return send(res, 404, { error: 'not found' });
  } catch (error) {
    return send(res, 500, { error: String(error?.message ?? error) });
  }
});

http.listen(port, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: http.address().port }) + '\n');
});

// Down at once, keep-alive connections and all (tests take the system down on purpose).
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
