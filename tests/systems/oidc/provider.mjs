// A real OpenID Connect provider for the console's sign-in tests: `oidc-provider` (certified),
// with its development login and consent pages, one confidential client (client_secret_basic,
// PKCE required, code flow, refresh tokens) and three accounts.
// Usage: OIDC_CLIENT_ID=… OIDC_CLIENT_SECRET=… node provider.mjs  (prints {"port": N})
import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

// Who may sign in, with the password the login page wants, the roles the ID token carries
// and how the sign-in counts as authenticated (RFC 8176 `amr`: a password, and for two of
// them a second factor as well).
const ACCOUNTS = {
  reviewer: { password: 'reviewer-pass', roles: ['security'], amr: ['pwd', 'mfa'] },
  nomfa: { password: 'nomfa-pass', roles: ['security'], amr: ['pwd'] },
  seller: { password: 'seller-pass', roles: ['sales'], amr: ['pwd', 'mfa'] },
};

const clientId = process.env.OIDC_CLIENT_ID || 'c360-console';
const clientSecret = process.env.OIDC_CLIENT_SECRET || 'c360-console-test-secret';
// A key of its own for every run: what the gateway trusts comes from the JWKS only.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signing = { ...privateKey.export({ format: 'jwk' }), kid: `test-${Date.now()}`, use: 'sig', alg: 'RS256' };

const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/console/callback'],
    post_logout_redirect_uris: ['http://127.0.0.1/console'],
  }],
  jwks: { keys: [signing] },
  cookies: { keys: ['c360-oidc-test-cookie-key'] },
  pkce: { required: () => true },
  scopes: ['openid', 'offline_access', 'roles'],
  // The ID token says how the account signed in (amr, acr: from the sign-in, see
  // interactionFinished below) and, with the `roles` scope, its roles.
  claims: { openid: ['sub', 'amr', 'acr'], roles: ['roles'], sid: null, auth_time: null },
  // The scopes' claims go into the ID token too (as Keycloak, Entra and Okta can be set up
  // to do), not only to the userinfo endpoint.
  conformIdTokenClaims: false,
  // A refresh token for the client whenever it may use one (no offline_access needed).
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Each refresh token is used once: a second use (a replay) revokes the grant.
  rotateRefreshToken: true,
  ttl: { AccessToken: 600, IdToken: 600, AuthorizationCode: 60, RefreshToken: 3600 },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  findAccount: async (ctx, id) => (ACCOUNTS[id] ? {
    accountId: id,
    claims: async () => ({ sub: id, roles: ACCOUNTS[id].roles }),
  } : undefined),
});

// The test's gateways listen on ephemeral ports, over http and https: a redirect to the
// loopback's /console/callback (and back to /console after signing out) is allowed on any
// port, as RFC 8252 allows a loopback redirect for native clients.
const loopback = (allowed) => function allowedOnAnyPort(value) {
  const url = URL.parse(value);
  const registered = allowed(this).map((uri) => URL.parse(uri).pathname);
  return Boolean(url) && ['http:', 'https:'].includes(url.protocol) && url.hostname === '127.0.0.1'
    && !url.search && !url.hash && registered.includes(url.pathname);
};
provider.Client.prototype.redirectUriAllowed = loopback((client) => client.redirectUris);
provider.Client.prototype.postLogoutRedirectUriAllowed = loopback(
  (client) => client.postLogoutRedirectUris,
);

// The development login page takes any login and password: here the password must be the
// account's, and the sign-in records how the account authenticated (its `amr`), as a
// provider with MFA does.
const finished = provider.interactionFinished.bind(provider);
provider.interactionFinished = async (req, res, result, options) => {
  if (result.login) {
    const account = ACCOUNTS[result.login.accountId];
    const password = Provider.ctx?.oidc?.body?.password;
    if (!account || password !== account.password) {
      return finished(req, res, {
        error: 'access_denied', error_description: 'unknown account or wrong password',
      }, options);
    }
    result.login.amr = account.amr;
    result.login.acr = account.amr.includes('mfa') ? 'urn:c360:test:mfa' : 'urn:c360:test:pwd';
  }
  return finished(req, res, result, options);
};

server.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ port })}\n`);
