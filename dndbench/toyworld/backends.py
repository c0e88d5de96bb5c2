"""(placeholder: toy-world backends, implemented in the backends issue)"""
