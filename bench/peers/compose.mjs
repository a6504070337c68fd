// Writes the supergraph SDL that Hive Gateway serves: each running subgraph's `_service.sdl`,
// composed with `@theguild/federation-composition`.
//
// usage: node compose.mjs OUT.graphql '[{"name": ..., "url": ...}, ...]'
import { writeFileSync } from 'node:fs';
import { parse } from 'graphql';
import { composeServices } from '@theguild/federation-composition';

const [out, list] = process.argv.slice(2);
const services = [];
for (const { name, url } of JSON.parse(list)) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ query: '{ _service { sdl } }' }),
  });
  const { data } = await response.json();
  services.push({ name, url, typeDefs: parse(data._service.sdl) });
}
const result = composeServices(services);
if (result.errors) {
  console.error(result.errors.map((e) => e.message).join('\n'));
  process.exit(1);
}
writeFileSync(out, result.supergraphSdl);
