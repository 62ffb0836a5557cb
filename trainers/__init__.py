"""The trainers: `python -m trainers.binary|cifar|compare`, on the shared loop (`trainers.loop`)."""

import hebbcli

hebbcli.import_tensorflow()  # before anything imports TensorFlow: its start-up noise stays hidden
