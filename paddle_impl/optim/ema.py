"""PaddleDetection 2.6's ModelEMA (ppdet/optimizer/ema.py, ema_decay_type 'threshold'), spec A.13.

The state starts at zeros for every state_dict entry (BN running stats included); black-listed keys (substring
match) keep the model's own tensor, so they follow it and are never decayed. update() after each optimiser step:
d = min(decay, (1 + step) / (10 + step)), v = d*v + (1-d)*param. apply() divides by 1 - d_last**step with the
LAST decay, not the product of the decays: ppdet's quirk, kept on purpose.

The decays are Python floats: Paddle's tensor-with-Python-float arithmetic runs in the tensor's dtype, exact in
float64 (A.14 #14; unlike pow's float32 exponent attribute), so a float64 model gets a float64 EMA.
"""
import paddle


class ModelEMA:
    def __init__(self, model, decay=0.9998, ema_black_list=("proj_conv.weight",)):
        self.decay = float(decay)
        self.step = 0
        self.decay_last = 0.0    # unused until the first update: apply() at step 0 returns the state as is
        state = model.state_dict()
        self.black_list = {k for k in state if any(b in k for b in ema_black_list)}
        with paddle.no_grad():
            self._state = {k: v if k in self.black_list else paddle.zeros_like(v) for k, v in state.items()}

    @paddle.no_grad()
    def update(self, model):
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        params = model.state_dict()
        for k, v in self._state.items():
            if k not in self.black_list:
                # out of place, as ppdet: tensors handed out by apply()/state_dict() are never changed later
                new = d * v + (1 - d) * params[k]
                new.stop_gradient = True
                self._state[k] = new
        self.step += 1
        self.decay_last = d

    @paddle.no_grad()
    def apply(self):
        """The bias-corrected EMA weights, keyed as model.state_dict()."""
        if self.step == 0:
            return dict(self._state)
        corr = 1 - self.decay_last ** self.step    # ppdet's quirk: the last decay to the power step
        out = {}
        for k, v in self._state.items():
            out[k] = v if k in self.black_list else v / corr
            out[k].stop_gradient = True
        return out

    def state_dict(self):
        # plain numbers and tensors only, so a checkpoint loads without unpickling objects
        return {"step": self.step, "decay_last": self.decay_last, **self._state}

    @paddle.no_grad()
    def set_state_dict(self, state):
        self.step = int(state["step"])
        self.decay_last = float(state["decay_last"])
        for k, v in self._state.items():
            if k not in self.black_list:    # black-listed entries stay the live model tensor
                new = paddle.assign(state[k]).astype(v.dtype)    # a copy, from a tensor or an array
                new.stop_gradient = True
                self._state[k] = new
