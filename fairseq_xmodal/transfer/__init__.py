"""Cross-modal checkpoint transfer: an s2c checkpoint -> a t2c checkpoint (or back), with exact accounting.

Both tasks build the same module tree (models/speecht5.py), so transfer is a key-by-key copy; what needs care is
deciding, for every key of the target model, where its tensor comes from, and refusing anything that would silently
change meaning (a permuted class head, a text embedding for another vocabulary, a shape mismatch).

Every target key gets exactly one origin:
  source    the checkpoint being transferred (`TransferPlan.source`)
  modality  a second checkpoint (`modality_from`), e.g. the pretrained init whose target-modality prenet we want
  init      newly initialised by a named, seeded strategy (`INIT_STRATEGIES`: "model" = the model's own init,
            "xavier_uniform" / "xavier_normal" = Glorot init of weight matrices, docs/methods/layerwise_transfer.md)

Selectors name the keys, in the one grammar of freezing and transfer (selectors.py): all, prenet (the target task's),
a group (speech_prenet, text_prenet, encoder, decoder, head, pooler), encoder.layers[.I|.I-J|.first|...|,J...] and
encoder.rest (the same for the decoder). The most specific selector naming a key wins (layer/rest > group > all); two
equally specific selectors that give one key different origins are an error.

The target's model.classifier is the source's unless `TransferPlan.classifier` changes it; head and pooler keys are
only taken from a checkpoint with the same classifier (its head reads other features otherwise): name their
re-initialisation (--reinit head,pooler) to change it. Decoder keys of a decoder_query source are dropped, with that
reason, when the target classifier builds no decoder (docs/methods/classifier_heads.md).

The parts:
  plan.py             TransferPlan, the origin of every key (assign), TransferError
  init_strategies.py  re-initialisation strategies (--init), registered by name
  sources.py          loading the source and --modality-from checkpoints (official ones imported on the fly)
  checks.py           dictionary, classifier and shape checks
  report.py           the accounting (<out>.transfer.json) and its summary
  build.py            transfer(plan) and transplanted_selectors (the ${xmodal_transplanted:} resolver)
"""
from .build import transfer, transplanted_selectors
from .init_strategies import INIT_STRATEGIES, InitContext, key_generator, register_init_strategy
from .plan import ORIGINS, Assignment, TransferError, TransferPlan, assign
from .report import FORMAT, TransferReport
from .sources import LoadedCheckpoint, load_modality, load_xmodal

__all__ = ["FORMAT", "INIT_STRATEGIES", "ORIGINS", "Assignment", "InitContext", "LoadedCheckpoint", "TransferError",
           "TransferPlan", "TransferReport", "assign", "key_generator", "load_modality", "load_xmodal",
           "register_init_strategy", "transfer", "transplanted_selectors"]
