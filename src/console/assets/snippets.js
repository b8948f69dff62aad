// Code that reproduces a playground request exactly: the same JSON body, sent to the same
// gateway with the official SDKs or curl. The key comes from MODEL_BRIDGE_API_KEY, never
// pasted into the snippet.

function py(v, indent) {
  const pad = " ".repeat(indent + 4), end = " ".repeat(indent);
  if (v === null) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number" || typeof v === "string") return JSON.stringify(v);
  if (Array.isArray(v)) {
    if (!v.length) return "[]";
    return `[\n${v.map(x => pad + py(x, indent + 4)).join(",\n")},\n${end}]`;
  }
  const entries = Object.entries(v);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, x]) => `${pad}${JSON.stringify(k)}: ${py(x, indent + 4)}`).join(",\n")},\n${end}}`;
}

export function python(baseUrl, body) {
  const args = Object.entries(body).map(([k, v]) => `    ${k}=${py(v, 4)},`).join("\n");
  const head = `import os\n\nfrom openai import OpenAI\n\nclient = OpenAI(\n    base_url=${JSON.stringify(baseUrl + "/v1")},\n    api_key=os.environ["MODEL_BRIDGE_API_KEY"],\n)\n\n`;
  if (body.stream) {
    return `${head}stream = client.chat.completions.create(\n${args}\n)\nfor chunk in stream:\n    if chunk.choices and chunk.choices[0].delta.content:\n        print(chunk.choices[0].delta.content, end="", flush=True)\n    if chunk.usage:\n        print()\n        print(chunk.usage)\n`;
  }
  return `${head}completion = client.chat.completions.create(\n${args}\n)\nprint(completion.choices[0].message.content)\nprint(completion.usage)\n`;
}

export function node(baseUrl, body) {
  const head = `import OpenAI from "openai";\n\nconst client = new OpenAI({\n  baseURL: ${JSON.stringify(baseUrl + "/v1")},\n  apiKey: process.env.MODEL_BRIDGE_API_KEY,\n});\n\n`;
  const req = JSON.stringify(body, null, 2);
  if (body.stream) {
    return `${head}const stream = await client.chat.completions.create(${req});\nfor await (const chunk of stream) {\n  process.stdout.write(chunk.choices[0]?.delta?.content ?? "");\n  if (chunk.usage) console.log("\\n", chunk.usage);\n}\n`;
  }
  return `${head}const completion = await client.chat.completions.create(${req});\nconsole.log(completion.choices[0].message.content);\nconsole.log(completion.usage);\n`;
}

export function curl(baseUrl, body) {
  // Single-quoted for the shell: a ' in the JSON closes, escapes and reopens the quote.
  const json = JSON.stringify(body, null, 2).replace(/'/g, `'\\''`);
  return `curl ${body.stream ? "-N " : ""}-sS ${JSON.stringify(baseUrl + "/v1/chat/completions")} \\\n  -H "Authorization: Bearer $MODEL_BRIDGE_API_KEY" \\\n  -H "Content-Type: application/json" \\\n  -d '${json}'\n`;
}
