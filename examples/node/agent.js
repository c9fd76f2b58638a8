// An agent written in Node.js that takes part in agent-messaging by calling the
// amp.* SQL functions only: no SDK, just the `pg` driver.
//
//   node agent.js DSN AGENT [--org ORG]
//
// It registers itself, becomes a delivery worker for its agent (claims pushed
// messages with amp.claim_deliveries and acknowledges them), answers every sync
// request with {"answer": <request>, "by": "node"}, attends the meetings it is
// invited to and speaks whenever it has the turn. It prints one JSON line per thing
// it does ({"event": ...}) so that a test (or you) can follow along.

"use strict";

const os = require("os");
const { Client } = require("pg");

const [dsn, agent, ...rest] = process.argv.slice(2);
if (!dsn || !agent) {
  console.error("usage: node agent.js DSN AGENT [--org ORG]");
  process.exit(2);
}
const orgAt = rest.indexOf("--org");
const org = orgAt >= 0 ? rest[orgAt + 1] : "node-org";

const emit = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));

const db = new Client({ connectionString: dsn });
const meetings = new Map(); // meeting id -> how many times we spoke there
let worker = null;

// amp errors carry their own SQLSTATE (class AM): switch on err.code.
async function ignoring(codes, query, params) {
  try {
    return await db.query(query, params);
  } catch (err) {
    if (!codes.includes(err.code)) throw err;
    return null;
  }
}

async function deliver() {
  const { rows } = await db.query(
    "SELECT * FROM amp.claim_deliveries($1, 10, interval '30 seconds', 5)", [worker]);
  for (const m of rows) {
    if (m.message_type === "sync_request") {
      const answer = JSON.stringify({ answer: m.content, by: "node" });
      // AM031: the asker stopped waiting (timeout, end) before we answered
      const done = await ignoring(["AM031"],
        "SELECT amp.sync_reply($1, $2, $3::text::jsonb, '{}', $4)",
        [agent, m.sender_external_id, answer, m.id]);
      emit(done ? "replied" : "too_late", { to: m.sender_external_id, request: m.content });
    } else if (m.message_type === "meeting_invitation") {
      await db.query("SELECT amp.attend_meeting($1, $2)", [agent, m.meeting_id]);
      await db.query("SELECT amp.listen(ARRAY[amp.meeting_channel($1)])", [m.meeting_id]);
      meetings.set(m.meeting_id, 0);
      emit("attended", { meeting: m.meeting_id, host: m.sender_external_id });
    } else {
      emit("received", { type: m.message_type, from: m.sender_external_id, content: m.content });
    }
    await db.query("SELECT amp.ack_delivery($1, $2)", [worker, m.id]);
  }
}

async function takeTurns() {
  for (const [meeting, spoken] of meetings) {
    const { rows: [turn] } = await db.query(
      "SELECT your_turn, meeting_ended FROM amp.meeting_turn($1, $2)", [agent, meeting]);
    if (turn.meeting_ended) {
      meetings.delete(meeting);
      emit("meeting_ended", { meeting });
    } else if (turn.your_turn) {
      const said = JSON.stringify({ text: `node speaking (${spoken + 1})`, by: "node" });
      // AM044: the turn expired between our check and our speak; fine, wait again
      const done = await ignoring(["AM044"],
        "SELECT amp.speak($1, $2, $3::text::jsonb)", [agent, meeting, said]);
      if (done) {
        meetings.set(meeting, spoken + 1);
        emit("spoke", { meeting, turn: spoken + 1 });
      }
    }
  }
}

// One pass at a time; a hint that arrives during a pass schedules another.
let busy = false;
let again = false;
async function work() {
  if (busy) { again = true; return; }
  busy = true;
  try {
    do { again = false; await deliver(); await takeTurns(); } while (again);
  } finally {
    busy = false;
  }
}
const fail = (err) => { console.error(err); process.exit(1); };

async function main() {
  await db.connect();
  await ignoring(["AM011"], "SELECT amp.register_organization($1)", [org]);
  await ignoring(["AM021"], "SELECT amp.register_agent($1, $2, $3)", [agent, org, "Node agent"]);
  ({ rows: [{ id: worker }] } = await db.query(
    "SELECT amp.register_worker($1, $2) AS id", [os.hostname(), process.pid]));
  await db.query("SELECT amp.serve_agents($1, ARRAY[$2])", [worker, agent]);
  // LISTEN first, then look at the tables: nothing sent in between is missed
  await db.query("SELECT amp.listen(ARRAY[amp.agent_channel($1)])", [agent]);
  db.on("notification", () => work().catch(fail));
  await work();
  // notifications are hints: a slow poll catches anything whose hint was lost
  setInterval(() => work().catch(fail), 2000);
  emit("ready", { agent, worker });
}

process.on("SIGTERM", async () => {
  if (worker) await db.query("SELECT amp.unregister_worker($1)", [worker]).catch(() => {});
  process.exit(0);
});
main().catch(fail);
