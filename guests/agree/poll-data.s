# agree/poll-data.s - a guest that polls the keyboard's data port and never its status port
# (issue 12: every run ends). No read is an idle point, so under the virtual clock only the
# quantum per observation moves guest time: the run ends at --max-time.

        .include "ports.inc"

        REAL_MODE_START
        PUTS    CONSOLE, "polling the data port\n"
1:      in      $KBD_DATA, %al
        jmp     1b
