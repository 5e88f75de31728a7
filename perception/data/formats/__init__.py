"""Dataset formats: ``v1`` (the package's own) and one converter module per public
dataset, each named here (``convert.convert`` imports the one asked for)."""

FORMATS = ("bdd100k", "kitti", "cityscapes", "tusimple", "culane")
