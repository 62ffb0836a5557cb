"""The trainers: `python -m trainers.binary|cifar|compare|omniglot`, on the shared loop (`trainers.loop`).

Each entry module starts with `hebbcli.import_tensorflow()`, before anything imports
TensorFlow, so its start-up noise stays hidden; importing this package imports nothing.
"""
