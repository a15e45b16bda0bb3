"""Logic of NeuralDrive's in-image programs (python3 standard library only).

Installed where Debian's python3 finds it (/usr/lib/python3/dist-packages). Each program is a
three-line entry point in /usr/lib/neuraldrive or /usr/bin that runs `python3 -I` and calls
`main()` of the module with the program's name (gpu-idle: neuraldrive.gpu_idle; the `neuraldrive`
command: neuraldrive.neuraldrive, whose short forms ollama-models/-status/-unload call
`alias_main`); its tests are tests/unit/test_<module>.py.
"""
