"""Logic of NeuralDrive's in-image programs (python3 standard library only).

The executables in /usr/lib/neuraldrive and /usr/bin are thin wrappers that put this
package's parent directory on sys.path and call one module's `main()`; keeping the
logic here lets the host's unit tests import it straight from the source tree.
"""
