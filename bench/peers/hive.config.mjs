// Hive Gateway's configuration for the benchmark. Hive merges identical in-flight subgraph
// requests by default; under load with repeated request bodies that hides most subgraph
// calls (LIBRARIES.md measured 0.19 calls per request instead of 3), so it is turned off to
// compare equal work.
import { defineConfig } from '@graphql-hive/gateway';

export const gatewayConfig = defineConfig({
  transportEntries: {
    '*.http': { options: { deduplicateInflightRequests: false } },
  },
  logging: 'error',
});
