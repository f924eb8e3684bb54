"""The engine: the pipeline a request goes through, and the parts it is made of.

- `pipeline` (Router, the library API): cache lookup → score → decide → call with fallback →
  account → record, each stage a call into one of the modules below;
- `policy`: score and constraints → a Decision (no I/O); `availability`: what the policy sees of
  each model now; `agents`: [agents] scenario routes and sticky sessions;
- `attempts`: the decision's candidates in turn (write ahead, reserve, call, fall back);
  `bookkeeping`: the ledger rows (paid calls written ahead, free answers and refusals after);
  `stream_end`: a streamed answer's accounting once it ends;
- `cache`: the response cache's policy and its embedded store (diskcache);
- `embedding`: embedding requests through the same attempts and ledger; `shadow`: shadow
  judging, off the request's path;
- `stores`: which store each part gets (embedded, or Redis and PostgreSQL with [shared]).
"""
