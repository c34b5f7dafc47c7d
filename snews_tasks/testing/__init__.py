"""What the tests and the benchmarks share: stream builders, real payloads of the
collaboration's client, the whole pipeline on real servers, a local Slack Web API."""
