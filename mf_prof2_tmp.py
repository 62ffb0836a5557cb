import collections, sys, numpy as np, tensorflow as tf
tf.compat.v1.disable_eager_execution()
import hebbkeras
mod = sys.argv[1]
B, N, T = 32, 128, 200
rng = np.random.default_rng(0)
x = tf.constant(rng.normal(size=(B, T, 8)).astype("float32"))
layer = hebbkeras.PlasticRNN(N, input_mode="dense", modulation=mod)
loss = tf.reduce_sum(layer(x))
grads = tf.gradients(loss, layer.trainable_weights)
sess = tf.compat.v1.Session()
sess.run(tf.compat.v1.global_variables_initializer())
sess.run(grads)
opts = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
md = tf.compat.v1.RunMetadata()
import time; t = time.perf_counter()
sess.run(grads, options=opts, run_metadata=md)
print("wall", time.perf_counter() - t)
by = collections.Counter(); cnt = collections.Counter()
for dev in md.step_stats.dev_stats:
    for n in dev.node_stats:
        op = n.timeline_label.split("=")[-1].split("(")[0].strip() if "=" in n.timeline_label else n.node_name
        by[op] += (n.all_end_rel_micros); cnt[op] += 1
tot = sum(by.values())
for op, us in by.most_common(14):
    print(f"{op:40s} {us/1e3:8.1f} ms  {cnt[op]:6d} calls")
print("total op ms", tot / 1e3, "nodes", sum(cnt.values()))
