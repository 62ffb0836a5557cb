import time, statistics, numpy as np, tensorflow as tf, keras, hebbkeras
B, N, T = 32, 128, 200
rng = np.random.default_rng(0)
x = tf.constant(rng.normal(size=(B, T, 8)).astype("float32"))
fns = {}
for mod in ("none", "simple", "retroactive"):
    layer = hebbkeras.PlasticRNN(N, input_mode="dense", modulation=mod)
    layer(x)
    fwd = tf.function(lambda x, layer=layer: tf.reduce_sum(layer(x)))
    def train(x, layer=layer):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x))
        return tape.gradient(loss, layer.trainable_weights)
    train = tf.function(train)
    fwd(x); train(x)
    fns[mod] = (fwd, train)
times = {(m, k): [] for m in fns for k in ("fwd", "train")}
for _ in range(9):
    for m, (fwd, train) in fns.items():
        for k, f in (("fwd", fwd), ("train", train)):
            t = time.perf_counter(); r = f(x); tf.nest.map_structure(lambda v: v.numpy(), r); times[(m, k)].append(time.perf_counter() - t)
for (m, k), v in times.items():
    print(m, k, f"{statistics.median(v):.3f}")
print(open("/proc/loadavg").read())
