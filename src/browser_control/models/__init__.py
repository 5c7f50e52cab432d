"""Model loading helpers and the small from-scratch LFM2 used where no pretrained weights can be fetched."""
