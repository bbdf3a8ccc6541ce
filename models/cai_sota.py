"""cai_sota (Cai et al., Interspeech 2021): the unimodal baseline plus a per-frame CTC head
`ctc_linear` Linear(D_audio, 32). Loss: CE + alpha * CTC."""
from .unimodal_baseline import UnimodalBaseline


class CaiSota(UnimodalBaseline):
    has_ctc = True
