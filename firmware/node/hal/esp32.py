# Platform layer for real ESP32-family boards (ESP32, -S3, -C3, -C6). Pins come from the board data
# (boards/<name>.json, embedded in config.json as "board"); Wi-Fi credentials from config "wifi".
# Nothing is touched at import: machine, network, ntptime and neopixel are imported inside the methods, so
# this module imports (and is tested) on the Unix port and on CPython.
import time

_EPOCH_2000 = 946684800  # seconds from 1970-01-01 to 2000-01-01 (the ESP32 port's epoch)
_LED_COLOUR = (0, 24, 0)  # dim green on the addressable RGB LEDs


class Platform:
    def __init__(self, board, config):
        self._board = board
        self._config = config
        self._boot_s = time.time()  # for "seconds since boot" until the clock is synced
        self._epoch = None
        self._synced = False
        self._wlan = None
        self._wdt = None
        self._led = None
        self.poll_ms = 100  # Wi-Fi status poll period while connecting

    def i2c(self):
        """A fresh machine.I2C on the board's bus (calling again re-initialises the bus after an error)."""
        from machine import I2C, Pin

        b = self._board["i2c"]
        return I2C(b["id"], scl=Pin(b["scl"]), sda=Pin(b["sda"]), freq=b["freq"])

    def _sta(self):
        if self._wlan is None:
            import network

            self._wlan = network.WLAN(network.STA_IF)
        return self._wlan

    def connect_network(self, timeout_ms):
        """Join the configured Wi-Fi network; True once connected, False after timeout_ms without it.
        timeout_ms=0 only starts an attempt (unless one is under way) and returns at once: the supervisor
        does that with backoff after a Wi-Fi loss, and watches network_up() while messages wait on flash."""
        wlan = self._sta()
        if wlan.isconnected():
            return True
        wifi = self._config.wifi
        if not wifi:
            return False
        import network

        wlan.active(True)
        if wlan.status() != getattr(network, "STAT_CONNECTING", -1):
            try:
                network.hostname(self._config.node_id)
            except (AttributeError, OSError, ValueError):  # older firmware, or the name is refused
                pass
            try:
                wlan.connect(wifi["ssid"], wifi["psk"])
            except OSError:  # the driver is still busy with an earlier attempt: wait for that one
                pass
        waited = 0
        while waited < timeout_ms:
            if wlan.isconnected():
                return True
            time.sleep_ms(self.poll_ms)
            waited += self.poll_ms
        return wlan.isconnected()

    def network_up(self):
        return self._sta().isconnected()

    def sync_time(self):
        """Set the RTC from NTP. Returns the time quality: 1 once NTP set the clock during this boot, else 0
        (a failed re-sync keeps 1: the RTC still holds NTP time)."""
        import ntptime

        try:
            ntptime.settime()
            self._synced = True
        except (OSError, OverflowError, ValueError, IndexError) as exc:
            print("fieldnode: NTP sync failed:", exc)
        return 1 if self._synced else 0

    def now(self):
        """Unix seconds (UTC) once the clock is synced; before that seconds since boot, which is what the
        protocol's time_quality 0 means."""
        t = time.time()
        if not self._synced:
            return int(t - self._boot_s)
        if self._epoch is None:
            # The ESP32 port has counted from 2000-01-01; check rather than assume, ports are moving to 1970.
            self._epoch = _EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0
        return int(t) + self._epoch

    def start_watchdog(self, timeout_ms):
        """Start the hardware watchdog (it cannot be stopped again); a second call only feeds it."""
        if self._wdt is None:
            from machine import WDT

            self._wdt = WDT(timeout=timeout_ms)
        else:
            self._wdt.feed()

    def feed_watchdog(self):
        if self._wdt is not None:
            self._wdt.feed()

    def status_led(self, on):
        led = self._board.get("status_led")
        if led is None:
            return
        ws2812 = led["kind"] == "ws2812"
        if self._led is None:
            from machine import Pin

            if ws2812:
                from neopixel import NeoPixel

                self._led = NeoPixel(Pin(led["pin"], Pin.OUT), 1)
            else:
                self._led = Pin(led["pin"], Pin.OUT)
        if ws2812:
            self._led[0] = _LED_COLOUR if on else (0, 0, 0)
            self._led.write()
        else:
            self._led.value(1 if bool(on) == led.get("active_high", True) else 0)

    def reset(self):
        import machine

        machine.reset()

    def unique_id(self):
        import machine

        return machine.unique_id()
