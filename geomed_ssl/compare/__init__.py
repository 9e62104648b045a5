"""``geomed-ssl compare``: label-efficiency curves of pretrained encoders against random initialisation and
baselines that need no encoder, on the user's own labelled data (see docs/label_efficiency.md)."""
