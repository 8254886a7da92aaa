"""The torch-free core: what a model bundle is and how it runs.

Both halves of the project stand on this package and on nothing else of each other: the trainer
writes bundles with it, the server (`app`) reads and runs them with it, so training and serving share
one tokenizer, one preprocessing, one prompt list and one zero-shot path (docs/architecture.md).

    format.py      read, validate and write bundles; CURRENT; eval.json
    atomic.py      replace a file atomically (write, fsync, rename, fsync the folder)
    tokenizer.py   CLIP's BPE, id for id with OpenAI's
    preprocess.py  image bytes -> normalized pixels, as OpenAI's pipeline
    prompts.py     the template sets and how they are filled
    encoders.py    a bundle's ONNX encoders in onnxruntime, and the interface every encoder offers
    zeroshot.py    prompt-ensembled label matrices, cosine, probability, top-k

Nothing here imports torch or the training modules (tests/test_architecture.py reads the imports).
"""
