"""RQ jobs: apply webhook events to profiles, plan and run steps, backfill, reconcile."""
