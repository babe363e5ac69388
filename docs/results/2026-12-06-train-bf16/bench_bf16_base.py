import time, torch, os, copy
torch.set_num_threads(int(os.environ.get("T","1")))
from service.settings import Settings
from service.model_loading import load_base_model, load_tokenizer
from learning.config import Budgets
from learning.policy import make_policy, encode_replies, forward_logprobs
from learning.reward import reply_features
s = Settings(); b = Budgets()
tok = load_tokenizer(s)
m32 = load_base_model(s)
m16 = load_base_model(s, dtype=torch.bfloat16)
p32 = make_policy(m32, b); p16 = make_policy(m16, b)
print({n: p.dtype for n, p in p16.named_parameters() if p.requires_grad and "lora_A" in n and "layers.0.self_attn.q" in n})
qs = ["How do I keep basil alive indoors?", "Explain how a refrigerator keeps food cold.", "Write a short poem about rain.", "What is the capital of Australia and why?"]
prompts = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in qs]
replies = ["Keep it in a sunny window and water it when the top of the soil is dry. " * 3,
           "A refrigerator moves heat from the inside to the outside using a refrigerant that evaporates and condenses.",
           "Rain taps softly on the glass,\nwhispers of the clouds that pass.",
           "Canberra. It was chosen as a compromise between Sydney and Melbourne in 1908."]
batch = encode_replies(tok, prompts, replies, b)
print("shape", tuple(batch.query_responses.shape))
with torch.no_grad():
    l32, _, h32 = forward_logprobs(p32, batch, 1.0)
    l16, _, h16 = forward_logprobs(p16, batch, 1.0)
mask = batch.response_mask
d = ((l32 - l16.float()).abs() * mask).sum() / mask.sum()
print("mean |dlogprob| per token", float(d), "mean logprob", float((l32*mask).sum()/mask.sum()))
print("per-reply sum diff", ((l32 - l16.float()) * mask).sum(1).tolist())
rm = torch.cat([torch.zeros(4, batch.prompt_len), mask], 1)
f32 = reply_features(h32, rm); f16 = reply_features(h16, rm).float()
print("feature diff norm / between-reply spread", float((f32 - f16).norm(dim=1).mean()), float((f32 - f32.mean(0)).norm(dim=1).mean()))
def step(pol, opt):
    lp,_,_ = forward_logprobs(pol, batch, 1.0)
    loss = -(lp.float()*mask).sum()/mask.sum()
    opt.zero_grad(); loss.backward(); opt.step()
o32 = torch.optim.AdamW([p for p in p32.parameters() if p.requires_grad], lr=1e-4)
o16 = torch.optim.AdamW([p for p in p16.parameters() if p.requires_grad], lr=1e-4)
for pol, opt, name in [(p32,o32,"fp32"),(p16,o16,"bf16 base")]*3:
    step(pol,opt); t=time.perf_counter()
    for _ in range(3): step(pol,opt)
    print(name, round((time.perf_counter()-t)/3, 3))
