from hebbkeras.native import build

print(build(verbose=True))
