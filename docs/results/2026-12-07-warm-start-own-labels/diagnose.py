"""Diagnosis (not training): how many of each user's warm-start own labels sit on harm-inviting prompts."""
from sqlmodel import Session
from service.settings import Settings
from service.db import make_engine
from service.model_loading import load_tokenizer
from learning.config import Budgets
from learning.data import chat_renderer, shared_view
from learning.harm import make_judge, judge_flagger
from learning.shared import preferred_replies, training_pairs
from learning.sim import prompts as P

settings = Settings()
budgets = Budgets.from_env() if hasattr(Budgets, "from_env") else Budgets()
tok = load_tokenizer(settings)
render = chat_renderer(tok)
red = {render([{"role": "user", "content": p}]) for p in P.RED_TEAM_TRAIN}
judge = make_judge(budgets.harm_judge)
with Session(make_engine(settings)) as s:
    view = shared_view(s, render, budgets, judge_flags=judge_flagger(judge, budgets.harm_judge_threshold))
full = view.full
flagged = set(h.prompt for h in full.harm if h.harmful)
own = preferred_replies(full, budgets.heldout_fraction)
pairs = training_pairs(full, budgets.heldout_fraction)
print("flagged prompts", len(flagged), "of which sim red-team", len(flagged & red))
for u in sorted(own):
    o = own[u][-budgets.warm_start_own_labels:]
    pr = pairs.get(u, [])[-budgets.warm_start_dpo_pairs:]
    o_red = [(p, r) for p, r in o if p in red]
    print(f"user {u}: own {len(o)} (on red-team {len(o_red)}, on flagged {sum(p in flagged for p,_ in o)}); "
          f"pairs {len(pr)} (red-team {sum(c in red for c,_,_,_ in pr)}, flagged {sum(c in flagged for c,_,_,_ in pr)})")
    for p, r in o_red:
        print("   ", repr(p.split('user\n')[-1][:50]), "->", repr(r[:150]), "judge", judge.score([r])[0] if judge else None)

print("\nranked pairs on the simulation's red-team prompts (chosen | rejected):")
for u in sorted(pairs):
    for c_p, c, r_p, r in pairs[u][-budgets.warm_start_dpo_pairs:]:
        if c_p in red:
            print(f"user {u}:", repr(c_p.split('user\n')[-1][:40]), "\n   chosen  ", repr(c[:140]), "\n   rejected", repr(r[:140]))
