// Parse and validate an AsyncAPI document with the AsyncAPI project's own parser.
// Usage: node validate_asyncapi.cjs NODE_MODULES_DIR DOCUMENT
// Prints one JSON line per diagnostic, then a summary line; exit 1 on any error.
const path = require("path");
const [modules, file] = process.argv.slice(2);
const { Parser, fromFile } = require(path.resolve(modules, "@asyncapi", "parser"));

(async () => {
  const parser = new Parser();
  const { document, diagnostics } = await fromFile(parser, file).parse();
  for (const d of diagnostics) {
    console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
  }
  const errors = diagnostics.filter((d) => d.severity === 0);
  if (document === undefined || errors.length > 0) {
    console.log(JSON.stringify({ valid: false, errors: errors.length }));
    process.exit(1);
  }
  const channels = document.channels().all().map((c) => c.id());
  const messages = document.messages().all().map((m) => m.id());
  // The payload schemas as the parser resolved them (external $refs followed).
  const payloads = {};
  for (const message of document.messages().all()) {
    const payload = message.payload();
    payloads[message.id()] = payload === undefined ? null : payload.json();
  }
  console.log(JSON.stringify({ valid: true, version: document.version(), channels, messages, payloads }));
})().catch((error) => {
  console.log(JSON.stringify({ valid: false, crash: String(error && error.stack || error) }));
  process.exit(1);
});
