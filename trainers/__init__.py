"""The trainers: `python -m trainers.binary|cifar|compare`, on the shared loop (`trainers.loop`)."""

import hebbcli

hebbcli.quiet_tensorflow()  # before anything imports TensorFlow
