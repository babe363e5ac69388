import time, torch, os
torch.set_num_threads(int(os.environ.get("T","1")))
from service.settings import Settings
from service.model_loading import load_base_model, load_tokenizer
from learning.config import Budgets
from learning.policy import make_policy, encode_replies, forward_logprobs
s = Settings()
b = Budgets()
m = load_base_model(s); tok = load_tokenizer(s)
pol = make_policy(m, b)
prompts = ["<|im_start|>user\nExplain how a refrigerator keeps food cold, in simple terms please.<|im_end|>\n<|im_start|>assistant\n"]*4
replies = ["A refrigerator works by moving heat from inside to outside. " * 6]*4
batch = encode_replies(tok, prompts, replies, b)
print(batch.query_responses.shape)
params=[p for p in pol.parameters() if p.requires_grad]
opt=torch.optim.AdamW(params, lr=1e-4)
def step(ac):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if ac else torch.autocast("cpu", enabled=False)
    with ctx:
        lp,_,_ = forward_logprobs(pol, batch, 1.0)
    loss = -(lp.float()*batch.response_mask).sum()/batch.response_mask.sum()
    opt.zero_grad(); loss.backward(); opt.step()
    return float(loss)
for ac in (False, True)*4:
    step(ac)
    t=time.perf_counter(); 
    for _ in range(3): l=step(ac)
    print("autocast" if ac else "fp32", (time.perf_counter()-t)/3, l)
