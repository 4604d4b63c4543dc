"""``clipforge text train``: a config -> a trained sentence encoder (OUT_DIR/model), on the engine."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from clipforge.engine import distributed as D
from clipforge.engine.loop import EngineConfig, FitResult, fit
from clipforge.errors import ConfigError
from clipforge.models.hf_text import resolve_hf_folder
from clipforge.models.sentence_encoder import SentenceEncoder, SentenceEncoderConfig, transformers_module
from clipforge.text.config import TextTrainConfig
from clipforge.text.data import read_text_data
from clipforge.text.task import ContrastiveTextTask, MLMNSPTask
from clipforge.text.tasks import HEADLINE, evaluate_text, load_tasks, model_encoder

log = logging.getLogger(__name__)


def _encoder_config(cfg: TextTrainConfig, base: SentenceEncoderConfig | None) -> SentenceEncoderConfig:
    base = base or SentenceEncoderConfig()
    return SentenceEncoderConfig(pooling=cfg.pooling or base.pooling,  # type: ignore[arg-type]
                                 normalize=base.normalize, max_length=cfg.max_length or base.max_length,
                                 prompts={**base.prompts, **cfg.prompts})


def build_encoder(cfg: TextTrainConfig) -> tuple[SentenceEncoder, torch.nn.Module | None]:
    """The sentence encoder to train and, for ``mlm_nsp``, the ``BertForPreTraining`` around it."""
    tf = transformers_module()
    if cfg.model == "scratch":
        folder = resolve_hf_folder(cfg.scratch.tokenizer)
        tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        s = cfg.scratch
        if s.width % s.heads:
            raise ConfigError(f"scratch.width={s.width} must be divisible by scratch.heads={s.heads}")
        bert_cfg = tf.BertConfig(vocab_size=len(tokenizer), hidden_size=s.width, num_hidden_layers=s.layers,
                                 num_attention_heads=s.heads, intermediate_size=4 * s.width,
                                 max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(cfg.seed)
        if cfg.objective == "mlm_nsp":
            pretraining = tf.BertForPreTraining(bert_cfg)
            return SentenceEncoder(pretraining.bert, tokenizer, _encoder_config(cfg, None)), pretraining
        return SentenceEncoder(tf.BertModel(bert_cfg), tokenizer, _encoder_config(cfg, None)), None
    from clipforge.checkpoints.sentence_transformers import read_config

    folder = resolve_hf_folder(cfg.model)
    base = read_config(folder) if (folder / "modules.json").is_file() else None
    encoder = SentenceEncoder.from_pretrained(str(folder), _encoder_config(cfg, base))
    if cfg.objective == "mlm_nsp":
        pretraining = tf.BertForPreTraining(encoder.encoder.config)
        pretraining.bert = encoder.encoder  # pretrained encoder, new heads
        pretraining.tie_weights()  # the MLM decoder shares the (pretrained) word embeddings, as in BERT
        return encoder, pretraining
    return encoder, None


def text_evaluator(sources: list[str]):
    """``model -> flat metrics`` over the task files (``task/metric``), or ``None`` without tasks."""
    if not sources:
        return None
    tasks = load_tasks(sources)

    def run(model: SentenceEncoder) -> dict[str, Any]:
        results = evaluate_text(model_encoder(model), tasks)
        return {f"{name}/{HEADLINE[r['kind']]}": r[HEADLINE[r["kind"]]] for name, r in results.items()}
    return run


def train_text(cfg: TextTrainConfig, resume: str | None = None, progress: bool = True) -> FitResult:
    info = D.init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = D.default_device(info, cfg.device)
    data = read_text_data(cfg.data, cfg.anchor_column, cfg.positive_column, cfg.negative_column, cfg.text_column)
    if len(data) < cfg.batch_size:
        raise ConfigError(f"{cfg.data}: {len(data)} usable rows, fewer than batch_size={cfg.batch_size}")
    encoder, pretraining = build_encoder(cfg)
    evaluate_fn = text_evaluator(cfg.eval_data)
    common = dict(batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed, info=info,
                  device=device, evaluate_fn=evaluate_fn)
    task: ContrastiveTextTask | MLMNSPTask
    if cfg.objective == "mlm_nsp":
        assert pretraining is not None
        pretraining.to(device)
        D.broadcast_parameters(pretraining, info)
        task = MLMNSPTask(pretraining, encoder, data, mlm_probability=cfg.mlm_probability, **common)
        what = "masked language modelling + next-sentence prediction"
    else:
        encoder.to(device)
        D.broadcast_parameters(encoder, info)
        task = ContrastiveTextTask(encoder, data, scale=cfg.scale, symmetric=cfg.symmetric,
                                   hard_negatives=cfg.hard_negatives, anchor_prompt=cfg.anchor_prompt,
                                   positive_prompt=cfg.positive_prompt, **common)
        what = ("multiple-negatives ranking" + (" with hard negatives" if task.use_negatives else "")
                if data.is_pairs else "unsupervised SimCSE (raw sentences: two dropout views)")
    if info.is_main:
        log.info(f"training {cfg.model} on {cfg.data} ({len(data)} rows): {what}")
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        cfg.save(Path(cfg.out_dir) / "text_config.json")
    engine = EngineConfig(out_dir=cfg.out_dir, epochs=cfg.epochs, max_steps=cfg.max_steps, minutes=cfg.minutes,
                          warmup_steps=cfg.warmup_steps, schedule=cfg.schedule, grad_clip=cfg.grad_clip,
                          precision=cfg.precision, log_every_steps=cfg.log_every_steps,
                          keep_checkpoints=cfg.keep_checkpoints, eval_every_epochs=0,
                          save_every_steps=cfg.save_every_steps, save_every_minutes=cfg.save_every_minutes,
                          save_each_epoch=False, max_nonfinite_steps=cfg.max_nonfinite_steps,
                          tensorboard=cfg.tensorboard, label=f"text {cfg.objective}")
    return fit(task, engine, info, device, resume=resume, progress=progress, skipped=dict(data.skipped))
