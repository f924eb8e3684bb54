"""Governance: what teams need to stop the waste without making anyone's work worse.

- `budgets`    per-user and per-team token and dollar budgets, atomic across processes
- `categories` the task category of each request (a fast rule-based classifier)
- `waste`      low-value requests: trivial documents, retry storms
- `audit`      accounts far above their peers, and their low-value requests
"""
