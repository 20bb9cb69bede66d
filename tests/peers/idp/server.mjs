// Corral's test identity provider: npm `oidc-provider` (OpenID-certified) with a users file that tests
// rewrite between sign-ins (groups removed, accounts renamed). Configured by environment:
//   IDP_PORT      port on 127.0.0.1 (0 = any free port; the chosen URL is printed as `listening <url>`)
//   IDP_CLIENTS   JSON file: [{client_id, client_secret, redirect_uris: [...]}, ...]
//   IDP_USERS     JSON file: {"alice": {"email": ..., "name": ..., "groups": [...]}, ...}; read at each use
//   IDP_TTL_ID_TOKEN  seconds an ID token lives (default 3600)
import { readFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import http from 'node:http';
import Provider from 'oidc-provider';

const readJson = (path) => JSON.parse(readFileSync(path, 'utf8'));
const users = () => readJson(process.env.IDP_USERS);
const clients = readJson(process.env.IDP_CLIENTS).map((c) => ({
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  ...c,
}));
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'corral-test-key', use: 'sig', alg: 'RS256' };

const server = http.createServer();
server.listen(Number(process.env.IDP_PORT || 0), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [jwk] },
    cookies: { keys: ['corral-test-idp-cookie-key'] },
    scopes: ['openid', 'profile', 'email', 'groups', 'offline_access'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
    ttl: { IdToken: Number(process.env.IDP_TTL_ID_TOKEN || 3600) },
    async findAccount(ctx, sub) {
      const user = users()[sub];
      if (!user) return undefined;
      return {
        accountId: sub,
        async claims() {
          const claims = { sub, email: user.email, email_verified: true, name: user.name };
          if (user.groups) claims.groups = user.groups;
          return claims;
        },
      };
    },
  });
  provider.proxy = false;
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
