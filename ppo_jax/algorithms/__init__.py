"""Update rules that consume a rollout batch."""
