"""(placeholder: implemented in the backends issue)"""
