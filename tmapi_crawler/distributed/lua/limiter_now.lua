-- Redis's clock in milliseconds: when this worker started, in the clock stop flags use.
return now_ms()
