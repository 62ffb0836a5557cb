"""A training loop of `tf.distribute` parts, for strategies that Keras's `fit` cannot drive.

Keras 3.15's `fit` fails under `MultiWorkerMirroredStrategy` before its first
step (docs/distributed.md). `fit(model, strategy, ...)` here does what `fit`
does for the shared loop (`trainers.loop.run`), with public APIs only:

- the replica step (`strategy.run` in a `tf.function`): the model's forward
  pass, its compiled loss (`model.compute_loss`, which Keras already divides
  by the number of replicas, so the summed gradients are the global batch's
  mean), `optimizer.apply_gradients` (which all-reduces the gradients across
  replicas and workers), and the compiled metrics of the replica's batch
  (`model.compute_metrics`);
- the logs: each step's values, averaged over replicas (`strategy.reduce`),
  reported as running means over the epoch as `fit` reports them, so the same
  callbacks (`trainers.loop.EpisodeLog`, `HistoryLog`, `Backup`,
  `TensorBoard`, a progress bar) write the same files;
- the callbacks, driven through `keras.callbacks.CallbackList` with the hooks
  `fit` calls, in the same order.

Every worker runs every callback, each in its own directory
(`trainers.loop.worker_dir`): saving the backup reads the model's variables,
which may take part in collectives, so all workers must do it together.
"""

import socket

import keras
import numpy as np
import tensorflow as tf


class WorkerLost(ValueError):
    """Another worker stopped in the middle of a step; the message says how to resume."""


# What a collective raises on the workers that are left when one stops.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                tf.errors.DeadlineExceededError)


def _build_compiled(model, strategy, element_spec):
    """Creates the optimizer's, compiled loss's and metrics' variables now, outside the step.

    Keras creates them at the first step (`fit` builds them before its
    `tf.function`); inside `strategy.run` they would be created in a replica
    context, in a `tf.function`. A batch of one zero episode, shaped like the
    dataset's, builds the loss and metrics in the strategy's scope.
    """
    if not model.optimizer.built:  # a restored backup built it already
        model.optimizer.build(model.trainable_variables)

    def zeros(spec):
        return tf.zeros([1, *spec.shape[1:]], spec.dtype)

    batch = tf.nest.map_structure(zeros, element_spec, expand_composites=True)
    local = strategy.experimental_local_results(batch)[0]  # the first replica's part
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(local)
    y_pred = model(x, training=False)
    model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
    model.compute_metrics(x, y, y_pred, sample_weight)
    model.reset_metrics()


def make_train_step(model, strategy):
    """A `tf.function(iterator) -> {log name: scalar}`: one global step, logs of that step only."""
    replicas = strategy.num_replicas_in_sync
    variables = model.trainable_variables

    def replica_step(batch):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            # The replica's mean loss / replicas: gradients summed over replicas
            # are those of the global batch's mean loss.
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                      training=True)
            scaled = model.optimizer.scale_loss(loss)  # a LossScaleOptimizer's scaling
        gradients = tape.gradient(scaled, variables)
        model.optimizer.apply_gradients(zip(gradients, variables))
        model.reset_metrics()  # the metrics of this step's batch alone
        logs = dict(model.compute_metrics(x, y, y_pred, sample_weight))
        logs["loss"] = loss * replicas
        return logs

    @tf.function
    def train_step(iterator):
        logs = strategy.run(replica_step, args=(next(iterator),))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in logs.items()}

    return train_step


def fit(model, strategy, data, epochs, steps_per_epoch, callbacks=(), verbose=1,
        initial_epoch=0):
    """Trains `model` (compiled in `strategy.scope()`) on the distributed dataset `data`.

    Like `model.fit(data, epochs=, steps_per_epoch=, callbacks=, verbose=,
    initial_epoch=)`: the callbacks get the same hooks and logs (running means
    over the epoch, averaged over replicas, of the compiled loss and metrics);
    `model.stop_training` ends the run after the current step. Only the chief
    (`strategy.extended.should_checkpoint`) shows progress.

    Args:
        model: a compiled `keras.Model`, built in `strategy.scope()`.
        strategy: the `tf.distribute.Strategy`.
        data: a dataset distributed by `strategy`, each element `(x, y)` or
            `(x, y, sample_weight)` with a static batch size; endless, read
            `steps_per_epoch` batches per epoch from `initial_epoch` on.
        epochs: the index of the last epoch + 1, as in `fit`.
        steps_per_epoch: global steps per epoch.
        callbacks: `keras.callbacks.Callback`s.
        verbose: 0, 1 (a progress bar) or 2 (a line per epoch), on the chief.
        initial_epoch: the first epoch to train (a resumed run's).

    Returns:
        The `keras.callbacks.History` of the epochs trained.

    Raises:
        WorkerLost (a ValueError): a collective failed because another worker
            stopped (TensorFlow's UnavailableError and the like).
    """
    verbose = verbose if strategy.extended.should_checkpoint else 0
    with strategy.scope():
        _build_compiled(model, strategy, data.element_spec)
        train_step = make_train_step(model, strategy)
    callbacks = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=verbose != 0, model=model,
        verbose=verbose, epochs=epochs, steps=steps_per_epoch)
    model.stop_training = False
    iterator = iter(data)
    callbacks.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        sums = {}
        for step in range(steps_per_epoch):
            callbacks.on_train_batch_begin(step)
            try:
                values = train_step(iterator)
            except _PEER_ERRORS as e:
                raise WorkerLost(
                    f"a worker stopped during step {step + 1} of epoch {epoch + 1} "
                    f"({type(e).__name__}: {str(e).strip().splitlines()[0]}). Every worker "
                    "keeps the backup of the last completed epoch: start all of them again "
                    "with the same commands to resume from it.") from None
            # fit reports running means over the epoch; batches are equal in size.
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            logs = {k: s / (step + 1) for k, s in sums.items()}
            callbacks.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)
    return next(c for c in callbacks.callbacks if isinstance(c, keras.callbacks.History))


def gather_int(strategy, value):
    """`[value of each replica]`, over all workers: a collective, every worker calls it."""
    @tf.function
    def gather(value):
        local = strategy.experimental_distribute_values_from_function(lambda _: value)
        return strategy.gather(local, axis=0)

    return np.asarray(gather(tf.constant([value], tf.int64))).tolist()


def free_ports(count):
    """`count` free TCP ports on 127.0.0.1, for a cluster of local worker processes."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
