# Board entry point: everything lives in the `node` package; a config problem returns to the REPL.
import node.app

node.app.run()
