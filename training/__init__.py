"""Layer 3, training: the loop, one fold from data to its best checkpoint, run control (the run
folder, resuming, locks), metrics and reports. Never imports `inference`."""
