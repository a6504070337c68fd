// Apollo Gateway (a supergraph router) over c360 and the survey subgraph, composed by
// introspection. The client's Authorization header is forwarded to every subgraph, so
// c360 decides its policies for the router's requests exactly as for direct ones.
// Usage: C360_URL=... SURVEY_URL=... C360_TOKEN=... node router.mjs  (prints {"port": N})
import { ApolloGateway, IntrospectAndCompose, RemoteGraphQLDataSource } from '@apollo/gateway';
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';

const gateway = new ApolloGateway({
  supergraphSdl: new IntrospectAndCompose({
    subgraphs: [
      { name: 'c360', url: process.env.C360_URL },
      { name: 'survey', url: process.env.SURVEY_URL },
    ],
    // Composition reads c360's _service { sdl } with a service token of its own.
    introspectionHeaders: { authorization: `Bearer ${process.env.C360_TOKEN}` },
  }),
  buildService({ url }) {
    return new RemoteGraphQLDataSource({
      url,
      willSendRequest({ request, context }) {
        if (context.authorization) request.http.headers.set('authorization', context.authorization);
        request.http.headers.set('x-client-name', 'supergraph-router');
      },
    });
  },
});

const server = new ApolloServer({ gateway });
const { url } = await startStandaloneServer(server, {
  listen: { port: 0, host: '127.0.0.1' },
  context: async ({ req }) => ({ authorization: req.headers.authorization }),
});
process.stdout.write(JSON.stringify({ port: Number(new URL(url).port) }) + '\n');
