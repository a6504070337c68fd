// `@apollo/gateway` under `@apollo/server`, composed at start from the running subgraphs
// (Apollo's own composition, IntrospectAndCompose), as its documentation sets it up.
//
// env: PORT, SUBGRAPHS (JSON: [{"name": ..., "url": ...}, ...])
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';
import { ApolloGateway, IntrospectAndCompose } from '@apollo/gateway';

const port = Number(process.env.PORT);
const subgraphs = JSON.parse(process.env.SUBGRAPHS);

const gateway = new ApolloGateway({ supergraphSdl: new IntrospectAndCompose({ subgraphs }) });
const server = new ApolloServer({ gateway, introspection: false });
const { url } = await startStandaloneServer(server, { listen: { port, host: '127.0.0.1' } });
console.log(`apollo gateway on ${url}`);
