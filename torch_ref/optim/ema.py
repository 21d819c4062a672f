"""Torch twin of paddle_impl.optim.ema: PaddleDetection 2.6's ModelEMA ('threshold' decay), spec A.13.

The state starts at zeros; black-listed keys (substring match) keep the model's own tensor (state_dict()
tensors share its storage), so they follow it and are never decayed. update() after each optimiser step:
d = min(decay, (1 + step) / (10 + step)), v = d*v + (1-d)*param. apply() divides by 1 - d_last**step with the
LAST decay, not the product of the decays: ppdet's quirk, kept on purpose.
"""
import torch


class ModelEMA:
    def __init__(self, model, decay=0.9998, ema_black_list=("proj_conv.weight",)):
        self.decay = float(decay)
        self.step = 0
        self.decay_last = 0.0    # unused until the first update: apply() at step 0 returns the state as is
        # Floating entries only: torch's BN has an int64 num_batches_tracked that Paddle's state_dict lacks (and
        # averaging a counter is meaningless), so both twins' EMAs hold the same entries up to key names.
        state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        self.black_list = {k for k in state if any(b in k for b in ema_black_list)}
        self._state = {k: v if k in self.black_list else torch.zeros_like(v) for k, v in state.items()}

    @torch.no_grad()
    def update(self, model):
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        params = model.state_dict()
        for k, v in self._state.items():
            if k not in self.black_list:
                # out of place, as the Paddle twin: the same roundings (d*v, (1-d)*p, their sum) and tensors
                # handed out by apply()/state_dict() never change later
                self._state[k] = d * v + (1 - d) * params[k]
        self.step += 1
        self.decay_last = d

    @torch.no_grad()
    def apply(self):
        """The bias-corrected EMA weights, keyed as model.state_dict() (floating entries only)."""
        if self.step == 0:
            return dict(self._state)
        corr = 1 - self.decay_last ** self.step    # ppdet's quirk: the last decay to the power step
        return {k: v if k in self.black_list else v / corr for k, v in self._state.items()}

    def state_dict(self):
        # plain numbers and tensors only, so torch.load(weights_only=True) reads a checkpoint of it
        return {"step": self.step, "decay_last": self.decay_last, **self._state}

    @torch.no_grad()
    def set_state_dict(self, state):
        self.step = int(state["step"])
        self.decay_last = float(state["decay_last"])
        for k, v in self._state.items():
            if k not in self.black_list:    # black-listed entries stay the live model tensor
                self._state[k] = torch.as_tensor(state[k], dtype=v.dtype, device=v.device).clone()
