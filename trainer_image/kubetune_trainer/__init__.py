"""The trainer that runs inside kubetune's GPU pods (and under `kubetune run`)."""
