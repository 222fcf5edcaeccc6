"""HiFiC runner: executed by the isolated TensorFlow env's python, never imported by bench.

    python runner.py version
    python runner.py encode IN.png OUT.tfci --model hific-lo --metagraph FILE [--device cpu|gpu]
    python runner.py decode IN.tfci OUT.png --metagraph hific-lo=FILE [--metagraph hific-mi=FILE ...] [--device cpu|gpu]

Contract (the way TFC's ``models/tfci.py`` runs its released models):
- a model is a serialized ``tf.compat.v1.MetaGraphDef`` read from FILE (nothing is
  downloaded); its signature ``sender`` maps the uint8 image [1, H, W, 3] to rank-1
  tensors, ``receiver`` maps those back to the image; inputs and outputs of a
  signature are taken in sorted key order;
- OUT.tfci is TFC's packed-tensor format (``tfc.PackedTensors``: a
  ``tf.train.Example`` whose feature "MD" is the model name and whose features
  chr(1), chr(2), ... hold the sender's outputs), so the bytes are the official
  ``.tfci`` bitstream and the decoder needs nothing else: it reads the model name
  from them and picks that model's FILE from the ``--metagraph NAME=FILE`` list;
- PNG in and out through TensorFlow (decode_image with 3 channels; the output is
  rounded and saturated to uint8).
- ``--device cpu`` (default) hides every GPU from TensorFlow, so encoder and decoder
  compute the entropy model's parameters on the same kind of device; ``gpu`` lets
  TensorFlow place ops as it likes (only with a CUDA build of TensorFlow).
Errors go to stderr with a non-zero exit status.
"""
import argparse
import json
import os
import sys

# TF's C++ logging (level 2 still prints cuDNN/cuFFT registration noise at import) is off, so
# the last stderr lines bench reports on a failure are the runner's own message or traceback
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def versions():
    from importlib.metadata import version

    return {"python": sys.version.split()[0], "tensorflow": version("tensorflow"),
            "tensorflow_compression": version("tensorflow-compression"), "numpy": version("numpy")}


def signature(tf, path, name):
    """The signature ``name`` of the metagraph in ``path`` as a concrete function."""
    meta = tf.compat.v1.MetaGraphDef()
    with open(path, "rb") as f:
        meta.ParseFromString(f.read())
    if name not in meta.signature_def:
        raise SystemExit(f"hific runner: {path} has no signature {name!r} (has {sorted(meta.signature_def)}): "
                         "not a TFC metagraph of a compression model")
    imported = tf.compat.v1.wrap_function(lambda: tf.compat.v1.train.import_meta_graph(meta), [])
    sig = meta.signature_def[name]
    element = imported.graph.as_graph_element
    inputs = [element(sig.inputs[k].name) for k in sorted(sig.inputs)]
    outputs = [element(sig.outputs[k].name) for k in sorted(sig.outputs)]
    return imported.prune(inputs, outputs)


def encode(src, dst, model, metagraph):
    import tensorflow as tf
    import tensorflow_compression as tfc

    image = tf.expand_dims(tf.image.decode_image(tf.io.read_file(src), channels=3), 0)
    sender = signature(tf, metagraph, "sender")
    packed = tfc.PackedTensors()
    packed.model = model
    packed.pack(sender(image))
    with open(dst, "wb") as f:
        f.write(packed.string)


def decode(src, dst, metagraphs):
    import tensorflow as tf
    import tensorflow_compression as tfc

    with open(src, "rb") as f:
        data = f.read()
    try:
        packed = tfc.PackedTensors(data)
        model = packed.model
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign bytes
        raise SystemExit(f"hific runner: {src} ({len(data)} bytes) is not a .tfci bitstream with a model name "
                         f"({type(exc).__name__}: {exc})") from None
    path = metagraphs.get(model)
    if path is None:
        raise SystemExit(f"hific runner: the bitstream names model {model!r}; this decoder knows "
                         f"{', '.join(sorted(metagraphs)) or 'none'}")
    if not os.path.isfile(path):
        raise SystemExit(f"hific runner: the bitstream names model {model!r}, whose metagraph {path} is not there "
                         "(bench weights fetch / bench weights import FILE)")
    receiver = signature(tf, path, "receiver")
    tensors = packed.unpack([t.dtype for t in receiver.inputs])
    image, = receiver(*tensors)
    image = tf.squeeze(image, 0)
    if image.dtype.is_floating:
        image = tf.round(image)
    if image.dtype != tf.uint8:
        image = tf.saturate_cast(image, tf.uint8)
    tf.io.write_file(dst, tf.image.encode_png(image))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="hific-runner", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version")
    enc = sub.add_parser("encode")
    enc.add_argument("src")
    enc.add_argument("dst")
    enc.add_argument("--model", required=True, help="model name written into the bitstream")
    enc.add_argument("--metagraph", required=True, help="the model's .metagraph file")
    enc.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    dec = sub.add_parser("decode")
    dec.add_argument("src")
    dec.add_argument("dst")
    dec.add_argument("--metagraph", action="append", default=[], metavar="NAME=FILE")
    dec.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args(argv)
    if getattr(args, "device", "gpu") == "cpu":
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    if args.command == "version":
        print(json.dumps(versions(), sort_keys=True))
    elif args.command == "encode":
        if not os.path.isfile(args.metagraph):
            raise SystemExit(f"hific runner: metagraph {args.metagraph} not found")
        encode(args.src, args.dst, args.model, args.metagraph)
    else:
        pairs = [m.split("=", 1) for m in args.metagraph]
        if any(len(p) != 2 for p in pairs):
            parser.error("--metagraph takes NAME=FILE")
        decode(args.src, args.dst, dict(pairs))


if __name__ == "__main__":
    main()
