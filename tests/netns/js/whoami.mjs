// Prints the caller's ARN, with credentials from the instance metadata service and nothing else:
// `node whoami.mjs ENDPOINT_URL`. The region is AWS_REGION's, or us-east-1 (the JS SDK never
// reads the region from IMDS); the endpoint is RoleCall's public API.
import { GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";
import { fromInstanceMetadata } from "@aws-sdk/credential-providers";

const endpoint = process.argv[2];
if (!endpoint) {
  console.error("usage: node whoami.mjs ENDPOINT_URL");
  process.exit(2);
}
const credentials = fromInstanceMetadata({ timeout: 1000, maxRetries: 0 });
const client = new STSClient({
  region: process.env.AWS_REGION ?? "us-east-1",
  endpoint,
  credentials,
  maxAttempts: 1,
});
const answer = await client.send(new GetCallerIdentityCommand({}));
console.log(answer.Arn);
