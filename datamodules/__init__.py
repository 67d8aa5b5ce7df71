"""Corpus indexers, the paper's preprocessing (VAD, MFCC images, face tracks), splits and DataModules."""
