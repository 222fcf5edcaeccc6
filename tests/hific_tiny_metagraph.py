"""Write a tiny model in the format of TFC's released HiFiC metagraphs (run by the
isolated env's python, not by bench's): ``python hific_tiny_metagraph.py OUT.metagraph [STEP]``.

What it shares with the released files, so bench's runner treats it like them: one
serialized ``tf.compat.v1.MetaGraphDef`` with frozen weights (constants only, no
variables to restore), signatures ``sender`` (input: uint8 image [1, H, W, 3];
outputs: rank-1 tensors) and ``receiver`` (inputs: those tensors, matched by sorted
key; output: the image), and real range coding with tensorflow-compression's ops.

The network: 4x4 average pooling ("SAME"), a logistic prior, range coding of the rounded
latent (one string per image), nearest-neighbour upsampling cropped back to H x W.
STEP (default 8) is the quantization step in grey levels: two STEPs = two "models".
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tensorflow_compression as tfc  # noqa: E402

V1 = tf.compat.v1


def build(path, step=8.0):
    graph = tf.Graph()
    with graph.as_default():
        # tables are computed from a fixed prior and stored in the graph (stateless: no variables)
        prior = tfc.NoisyLogistic(loc=128.0 / step, scale=48.0 / step)  # grey levels / step
        em = tfc.ContinuousBatchedEntropyModel(prior, coding_rank=3, compression=True, stateless=True)

        image = V1.placeholder(tf.uint8, [1, None, None, 3], name="input_image")
        x = tf.cast(image, tf.float32)
        y = tf.nn.avg_pool2d(x, 4, 4, "SAME") / step
        bits = em.compress(y)  # [1] string
        sender = {"channel_bits": bits, "image_shape": tf.shape(image)[1:3], "latent_shape": tf.shape(y)[1:]}

        r_bits = V1.placeholder(tf.string, [1], name="r_channel_bits")
        r_image_shape = V1.placeholder(tf.int32, [2], name="r_image_shape")
        r_latent_shape = V1.placeholder(tf.int32, [3], name="r_latent_shape")
        y_hat = em.decompress(r_bits, r_latent_shape) * step
        up = tf.repeat(tf.repeat(y_hat, 4, axis=1), 4, axis=2)
        x_hat = up[:, :r_image_shape[0], :r_image_shape[1], :]
        receiver_in = {"channel_bits": r_bits, "image_shape": r_image_shape, "latent_shape": r_latent_shape}

        info = V1.saved_model.utils.build_tensor_info
        meta = V1.train.export_meta_graph(graph=graph)
        sig = V1.saved_model.signature_def_utils.build_signature_def
        meta.signature_def["sender"].CopyFrom(
            sig({"input_image": info(image)}, {k: info(v) for k, v in sender.items()}))
        meta.signature_def["receiver"].CopyFrom(
            sig({k: info(v) for k, v in receiver_in.items()}, {"output_image": info(x_hat)}))
    with open(path, "wb") as f:
        f.write(meta.SerializeToString())


if __name__ == "__main__":
    build(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 8.0)
