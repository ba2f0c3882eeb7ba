#!/usr/bin/env python3
"""crosscheck_models.py - number-for-number check of the C reference score
networks (models/unet.c, models/mlp.c) against the PyTorch mirror
(tools/bench/torch_mirror.py).

Runs the C driver `dump_models` (built in <build>/models/) into a temporary
directory; for unet-28, unet-32 (batch 2) and mlp (D = 2, batch 5) it loads
the C parameters into the mirror by name (the state_dict keys and order must
equal the C names), recomputes out = net(x, cond, sigma) and the gradients of
L = sum(out * r) with respect to x and every parameter in float32, and
compares each tensor with

    err = max |c - torch| / max(max |torch|, 1e-12)     (per tensor)

PASS if every err <= 1e-4. Exit status: 0 on PASS (or SKIP when torch or
numpy is missing), 1 on any mismatch, 2 if the C driver fails.

Usage: /usr/bin/python3 tests/crosscheck/crosscheck_models.py [path/to/dump_models]
(Debian's torch lives in the system python, hence /usr/bin/python3.)
"""
import os
import subprocess
import sys
import tempfile

TOL = 1e-4
TINY = 1e-12
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

try:
    import numpy as np
    import torch
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"SKIP: {e.name} is not installed (crosscheck needs torch and numpy)")
    sys.exit(0)

sys.path.insert(0, os.path.join(ROOT, "tools", "bench"))
import torch_mirror as tm  # noqa: E402

MODELS = ("unet-28", "unet-32", "mlp")


def read_manifest(path):
    with open(path) as f:
        head = f.readline().split()
        assert head[0] == "trainable_count", f"bad manifest {path}"
        count = int(head[1])
        items = []
        for line in f:
            tok = line.split()
            name, trainable, offset, ndim = tok[0], tok[1] == "1", int(tok[2]), int(tok[3])
            items.append((name, trainable, offset, tuple(int(t) for t in tok[4:4 + ndim])))
    return count, items


def rel_err(c, ref):
    c = np.asarray(c, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if c.shape != ref.shape:
        return float("inf")
    return float(np.max(np.abs(c - ref)) / max(np.max(np.abs(ref)), TINY))


def check_model(dump, name, verbose):
    load = lambda what: np.load(os.path.join(dump, f"{name}.{what}.npy"))  # noqa: E731
    count, items = read_manifest(os.path.join(dump, f"{name}.manifest.txt"))
    if name == "mlp":
        net = tm.MLP(dim=load("x").shape[1])
    else:
        net = tm.UNet(tm.unet_preset(name))
    failures = []

    # Same names, shapes and order; same trainable count.
    sd = net.state_dict()
    c_names = [it[0] for it in items]
    if list(sd.keys()) != c_names:
        missing = [k for k in sd if k not in c_names][:5]
        extra = [k for k in c_names if k not in sd][:5]
        print(f"  {name}: state_dict keys differ from the C names "
              f"(torch only: {missing}, C only: {extra}, or different order)")
        return False
    t_count = tm.trainable_count(net)
    print(f"  {name}: trainable parameters C {count}, torch {t_count}"
          f" -> {'PASS' if count == t_count else 'FAIL'}")
    if count != t_count:
        failures.append("count")

    flat, gflat = load("params"), load("grads")
    new_sd = {}
    for pname, trainable, off, shape in items:
        if tuple(sd[pname].shape) != shape:
            print(f"  {name}: {pname} shape C {shape} torch {tuple(sd[pname].shape)}")
            return False
        numel = int(np.prod(shape))
        new_sd[pname] = torch.from_numpy(flat[off:off + numel].reshape(shape).copy())
    net.load_state_dict(new_sd)
    trainable_torch = {k for k, _ in net.named_parameters()}
    for pname, trainable, _, _ in items:
        if trainable != (pname in trainable_torch):
            print(f"  {name}: {pname} trainable in one implementation only")
            return False

    x = torch.from_numpy(load("x")).requires_grad_(True)
    cond, sigma = torch.from_numpy(load("cond")), torch.from_numpy(load("sigma"))
    r = torch.from_numpy(load("r"))
    out = net(x, cond, sigma)
    (out * r).sum().backward()

    results = [("out", rel_err(load("out"), out.detach().numpy())),
               ("dL/dx", rel_err(load("dx"), x.grad.numpy()))]
    params = dict(net.named_parameters())
    for pname, trainable, off, shape in items:
        if not trainable:
            continue
        numel = int(np.prod(shape))
        results.append((f"dL/d {pname}",
                        rel_err(gflat[off:off + numel].reshape(shape), params[pname].grad.numpy())))
    worst = max(results, key=lambda t: t[1])
    for label, err in results:
        bad = not err <= TOL
        if bad:
            failures.append(label)
        if verbose or bad or label in ("out", "dL/dx"):
            print(f"  {name}: {label:<45s} max rel err {err:.3e}  {'FAIL' if bad else 'ok'}")
    print(f"  {name}: {len(results)} tensors compared (out, dL/dx, {len(results) - 2} parameter "
          f"gradients); worst {worst[0]} {worst[1]:.3e} -> {'FAIL' if failures else 'PASS'}")
    return not failures


def main():
    exe = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "models", "dump_models")
    verbose = os.environ.get("CROSSCHECK_VERBOSE", "1") != "0"
    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float32)
    with tempfile.TemporaryDirectory(prefix="sd-crosscheck-") as dump:
        try:
            proc = subprocess.run([exe, dump], capture_output=True, text=True)
        except OSError as e:
            print(f"FAIL: cannot run {exe}: {e}")
            return 2
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            sys.stdout.write(proc.stderr)
            print(f"FAIL: {exe} exited with {proc.returncode}")
            return 2
        ok = True
        for name in MODELS:
            ok = check_model(dump, name, verbose) and ok
    print(f"crosscheck_models: {'PASS' if ok else 'FAIL'} (tolerance {TOL:g} relative to each "
          f"tensor's max |torch|)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
